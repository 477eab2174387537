"""Loading models and describing them.

A model spec is one of

* ``zoo:NAME`` — a small model shipped with circuitgraph (see :func:`circuitgraph.zoo.list_models`),
  or one another package ships as a GGUF file (``zoo:smollm2-135m``);
* a local directory in Hugging Face format (``config.json``, weights, tokenizer);
* a GGUF file, or a folder holding exactly one (dequantised once into a cached directory, see
  :mod:`circuitgraph.gguf`);
* a Hugging Face hub name such as ``gpt2`` (needs a hub or a local cache).

Every spec goes through the same path, ``TransformerBridge.boot_transformers``, so the
zoo models are loaded exactly like a user's model.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitgraph.errors import ConfigError, ModelLoadError, ModelStateError
from circuitgraph.gguf import cached_model_dir, find_gguf
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
    moe: bool = False  # MLPs route tokens to experts: no single neuron basis

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
    d_mlp, moe = (0, False) if attn_only else _mlp_width(model)
    return ModelInfo(
        name=name or str(getattr(cfg, "model_name", "")),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=d_mlp,
        norm="RMS" if "RMS" in str(norm) else ("LN" if "LN" in str(norm) else "none"),
        rotary=getattr(cfg, "positional_embedding_type", "") == "rotary",
        gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
        parallel_blocks=bool(getattr(cfg, "parallel_attn_mlp", False)),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        attn_only=attn_only,
        moe=moe,
    )


def _mlp_width(model: Any) -> tuple[int, bool]:
    """(neurons per MLP, whether the MLPs are mixtures of experts).

    The width comes from the MLP weights: TransformerLens reports 4·d_model for OPT and
    Falcon whatever their ``ffn_dim``. A mixture of experts has no single W_in.
    """
    blocks = getattr(model, "blocks", None)
    mlp = getattr(blocks[0], "mlp", None) if blocks is not None and len(blocks) else None
    inner = getattr(mlp, "original_component", None) or mlp
    if inner is not None and hasattr(inner, "experts"):
        return int(getattr(model.cfg, "d_mlp", 0) or 0), True
    try:  # one layer's weight (the stacked W_in would copy every layer's)
        return int(mlp.W_in.shape[-1]), False  # type: ignore[union-attr]
    except (AttributeError, RuntimeError, KeyError, IndexError):
        return int(getattr(model.cfg, "d_mlp", 0) or 0), False


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
        if find_gguf(path) is not None:
            return str(path), path.stem
        if not (path / "config.json").is_file() and not is_native_dir(path):
            raise ModelLoadError(
                f"expected a Hugging Face model directory with a config.json (or a folder with one "
                f".gguf file) but {spec!r} has neither; point to the folder that save_pretrained() "
                "wrote or to a GGUF file"
            )
        return str(path), path.name
    if path.suffix.lower() == ".gguf":
        raise ModelLoadError(f"GGUF file {spec!r} does not exist; check the path")
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
        spec: ``zoo:NAME``, a local Hugging Face directory, a GGUF file (or a folder holding
            one), or a hub name.
        device: where to put it; defaults to CUDA when available, else CPU.
        dtype: ``float32`` (default), ``bfloat16``, ... or a ``torch.dtype``. A GGUF is
            dequantised to it (and cached once per file and dtype).
        hf_model: an already-built Hugging Face model of the directory's config (its weights
            are used instead of loading any; the bench builds large random models this way,
            directly on the GPU).

    Example:
        >>> model, info = load_model("zoo:attn-only-2l")  # doctest: +SKIP
        >>> info.n_layers  # doctest: +SKIP
        2
    """
    from safetensors import SafetensorError
    from transformer_lens.model_bridge import TransformerBridge

    path, name = _resolve_spec(spec)
    torch_dtype = _parse_dtype(dtype) or torch.float32
    device = resolve_device(device)
    _refuse_misloaded(_local_config(path), spec)
    try:
        with _quiet_loading():
            gguf = find_gguf(Path(path))
            if gguf is not None:
                path = str(cached_model_dir(gguf, torch_dtype))
            if is_native_dir(path):  # TL-native (the attention-only zoo model); see zoo/native.py
                bridge = boot_native_dir(path, device=str(device), dtype=torch_dtype)
            else:
                bridge = TransformerBridge.boot_transformers(
                    path, device=str(device), dtype=torch_dtype, hf_model=hf_model
                )
    except torch.OutOfMemoryError as err:
        raise ModelLoadError(
            f"not enough memory on {device} to load {spec!r}; use a smaller --dtype (bfloat16) "
            "or another device"
        ) from err
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        if isinstance(err, SafetensorError) or "safetensors" in type(err).__module__:
            raise ModelLoadError(
                f"could not read the weights of {spec!r} ({_first_line(err)}); the file is "
                "truncated or corrupt, so save or download the model again"
            ) from err
        if Path(path).is_dir() and not _has_tokenizer_files(Path(path)):
            raise _no_tokenizer(spec) from err
        if Path(path).exists():
            raise ModelLoadError(
                f"could not load the model directory {spec!r}: {_first_line(err)}"
            ) from err
        _refuse_misloaded(_cached_config(path), spec)  # a hub model TL failed on: say why
        raise ModelLoadError(
            f"could not load {spec!r} from the Hugging Face hub or the local cache (no "
            "network access?); use a zoo model (`circuitgraph models`) or a local model "
            "directory instead"
        ) from err
    bridge.eval()
    _refuse_misloaded(getattr(getattr(bridge, "original_model", None), "config", None), spec)
    _check_tokenizer(bridge, spec)
    _keep_bos_convention(bridge, path)
    info = model_info(bridge, name)
    return bridge, info


def _local_config(path: str) -> dict[str, Any] | None:
    """The config.json of a local model directory (None for hub names and native dirs)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None  # transformers will say what is wrong with it
    return data if isinstance(data, dict) else None


def _cached_config(name: str) -> Any:
    """The config of a hub model from the local cache only (None when there is none)."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:  # no cache, no such model: nothing to say beyond the load error
        return None


def _refuse_misloaded(config: Any, spec: str) -> None:
    """Refuse architectures that TransformerLens loads with wrong weights (no error of its
    own, or a traceback deep inside it)."""
    if config is None:
        return
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    if get("model_type") == "falcon" and get("new_decoder_architecture", False):
        raise ModelLoadError(
            f"expected a model that transformer-lens loads faithfully but {spec!r} is a Falcon "
            "with the new decoder architecture (grouped-query attention, "
            "new_decoder_architecture=true), whose fused q/k/v weights transformer-lens "
            "mis-splits into wrong logits; no circuitgraph method can run on it, so use another "
            "model"
        )


def _check_tokenizer(bridge: Any, spec: str) -> None:
    """Refuse a model without a usable tokenizer now, not later as "no single-token words".

    A directory without tokenizer files loads with an empty fallback tokenizer (vocab 0).
    """
    tokenizer = getattr(bridge, "tokenizer", None)
    if tokenizer is None or not int(getattr(tokenizer, "vocab_size", 0) or 0):
        raise _no_tokenizer(spec)


#: files of which a model directory with a tokenizer has at least one
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _has_tokenizer_files(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES) or any(path.glob("*.tiktoken"))


def _no_tokenizer(spec: str) -> ModelLoadError:
    return ModelLoadError(
        f"expected a tokenizer with the model {spec!r} but found none (no tokenizer.json or "
        "vocabulary files next to its config); save one there with tokenizer.save_pretrained(DIR)"
    )


def _keep_bos_convention(bridge: Any, path: str) -> None:
    """Give the bridge's tokenizer back its own BOS convention.

    TransformerLens reloads every tokenizer with ``add_bos_token=True``, so ``model.tokenizer``
    would add BOS to all text, although e.g. SmolLM2 was not trained that way (its IOI logit
    difference drops from 4.21 to 3.40 with one). The tokenizer as saved with the model decides
    (:func:`~circuitgraph.tasks.pairs.adds_bos`); TransformerLens's own ``to_tokens`` is told
    the same through its config.
    """
    from transformers import AutoTokenizer

    from circuitgraph.tasks.pairs import adds_bos

    tok = getattr(bridge, "tokenizer", None)
    if tok is None:
        return
    try:
        with _quiet_loading():
            own = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return  # no tokenizer files of its own: keep what the bridge has
    convention = adds_bos(own)
    if adds_bos(tok) != convention:
        if hasattr(tok, "add_bos_token"):
            tok.add_bos_token = convention
        if hasattr(tok, "backend_tokenizer") and hasattr(own, "backend_tokenizer"):
            tok.backend_tokenizer.post_processor = own.backend_tokenizer.post_processor
    bridge.cfg.default_prepend_bos = convention
    bridge.cfg.tokenizer_prepends_bos = adds_bos(tok)


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
