"""Loading models and describing them.

A model spec is one of

* ``zoo:NAME`` — a small model shipped with circuitgraph (see :func:`circuitgraph.zoo.list_models`);
* a local directory in Hugging Face format (``config.json``, weights, tokenizer);
* a Hugging Face hub name such as ``gpt2`` (needs a hub or a local cache).

Every spec goes through the same path, ``TransformerBridge.boot_transformers``, so the
zoo models are loaded exactly like a user's model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitgraph.errors import ConfigError, ModelLoadError, ModelStateError
from circuitgraph.zoo.native import boot_native_dir, is_native_dir

__all__ = ["ModelInfo", "load_model", "model_info", "require_eval", "resolve_device"]


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts about a model that every estimator needs.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> ModelInfo("m", 2, 4, 4, 32, 8, 128, "LN", False, False, False, 50, 64).grouped_query
        False
    """

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    norm: str  # "LN", "RMS" or "none"
    rotary: bool
    gated_mlp: bool
    parallel_blocks: bool
    d_vocab: int
    n_ctx: int
    attn_only: bool = False

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads < self.n_heads

    @property
    def heads_per_kv(self) -> int:
        return self.n_heads // self.n_kv_heads


def model_info(model: Any, name: str = "") -> ModelInfo:
    """Read a :class:`ModelInfo` from a ``TransformerBridge`` (or anything with a TL ``cfg``).

    Example:
        >>> info = model_info(model)  # doctest: +SKIP
    """
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    norm = getattr(cfg, "normalization_type", None) or "none"
    attn_only = bool(getattr(cfg, "attn_only", False))
    return ModelInfo(
        name=name or str(getattr(cfg, "model_name", "")),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=0 if attn_only else int(getattr(cfg, "d_mlp", 0) or 0),
        norm="RMS" if "RMS" in str(norm) else ("LN" if "LN" in str(norm) else "none"),
        rotary=getattr(cfg, "positional_embedding_type", "") == "rotary",
        gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
        parallel_blocks=bool(getattr(cfg, "parallel_attn_mlp", False)),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        attn_only=attn_only,
    )


def require_eval(model: torch.nn.Module) -> None:
    """Refuse a model in train mode: dropout would make every estimate random.

    Example:
        >>> import torch
        >>> require_eval(torch.nn.Linear(2, 2).eval())
    """
    if model.training:
        raise ModelStateError(
            "expected a model in eval mode but it is in train mode; call model.eval() first "
            "(dropout would make every patching result random)"
        )


def _resolve_spec(spec: str) -> tuple[str, str]:
    """Return (path_or_hub_name, display_name) for a spec."""
    if spec.startswith("zoo:"):
        from circuitgraph import zoo

        return str(zoo.model_path(spec[4:])), spec
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not is_native_dir(path):
            raise ModelLoadError(
                f"expected a Hugging Face model directory with a config.json but {spec!r} has "
                "none; point to the folder that save_pretrained() wrote"
            )
        return str(path), path.name
    if spec.startswith((".", "/", "~")) or os.sep in spec.rstrip("/").split("/", 1)[-1]:
        raise ModelLoadError(f"model directory {spec!r} does not exist; check the path")
    return spec, spec


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float64": torch.float64,
        "fp64": torch.float64,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ModelLoadError(
            f"expected a dtype among {sorted(table)} but got {dtype!r}; pass one of those names"
        )
    return table[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for, always with an index for a GPU.

    None means the first CUDA device when torch sees one, else the CPU. ``cuda`` becomes the
    current CUDA device (``cuda:0`` unless the process chose another, as each ``torchrun``
    worker does), ``cuda:N`` must exist, ``mps`` needs torch's Metal backend. Anything
    else is a one-sentence :class:`ConfigError`.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"expected a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps' but got {device!r}"
        ) from None
    if resolved.type == "cuda":
        return _cuda_device(device, resolved)
    if resolved.type == "mps" and not _mps_available():
        raise ConfigError(
            f"device {device!r} asks for Apple's Metal backend but torch has none here"
        )
    if resolved.type not in ("cpu", "mps"):
        raise ConfigError(f"expected a device of type cpu, cuda or mps but got {device!r}")
    return resolved


def _cuda_device(asked: str | torch.device, resolved: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(asked)!r} asks for a GPU but torch sees no CUDA device here"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    if index >= count:
        raise ConfigError(
            f"device {str(asked)!r} asks for GPU {index} but torch sees {count} "
            f"(cuda:0 to cuda:{count - 1}); pick one of those"
        )
    return torch.device("cuda", index)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def load_model(
    spec: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    hf_model: Any = None,
) -> tuple[Any, ModelInfo]:
    """Load a model as a ``TransformerBridge`` in eval mode, plus its :class:`ModelInfo`.

    Args:
        spec: ``zoo:NAME``, a local Hugging Face directory, or a hub name.
        device: where to put it; defaults to CUDA when available, else CPU.
        dtype: ``float32`` (default), ``bfloat16``, ... or a ``torch.dtype``.
        hf_model: an already-built Hugging Face model of the directory's config (its weights
            are used instead of loading any; the bench builds large random models this way,
            directly on the GPU).

    Example:
        >>> model, info = load_model("zoo:attn-only-2l")  # doctest: +SKIP
        >>> info.n_layers  # doctest: +SKIP
        2
    """
    from transformer_lens.model_bridge import TransformerBridge

    path, name = _resolve_spec(spec)
    torch_dtype = _parse_dtype(dtype) or torch.float32
    device = resolve_device(device)
    try:
        with _quiet_loading():
            if is_native_dir(path):  # TL-native (the attention-only zoo model); see zoo/native.py
                bridge = boot_native_dir(path, device=str(device), dtype=torch_dtype)
            else:
                bridge = TransformerBridge.boot_transformers(
                    path, device=str(device), dtype=torch_dtype, hf_model=hf_model
                )
    except (OSError, ValueError) as err:
        if Path(path).exists():
            raise ModelLoadError(
                f"could not load the model directory {spec!r}: {_first_line(err)}"
            ) from err
        raise ModelLoadError(
            f"could not load {spec!r} from the Hugging Face hub or the local cache (no "
            "network access?); use a zoo model (`circuitgraph models`) or a local model "
            "directory instead"
        ) from err
    bridge.eval()
    info = model_info(bridge, name)
    return bridge, info


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


@contextlib.contextmanager
def _quiet_loading():  # type: ignore[no-untyped-def]
    """Silence the progress bars and warnings that loading prints; restore them afterwards."""
    loggers = [
        logging.getLogger(n) for n in ("transformers", "transformer_lens", "huggingface_hub")
    ]
    levels = [lg.level for lg in loggers]
    old_env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if old_env is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = old_env
