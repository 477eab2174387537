"""TransformerLens-native model directories (the attention-only zoo model).

Hugging Face has no attention-only architecture, so ``attn-only-2l`` is a TL-native model
(``TransformerBridge.boot_native``): a directory with :data:`NATIVE_CONFIG` (the
``TransformerBridgeConfig`` fields), ``model.safetensors`` (the native module's state dict)
and the tokenizer files. It loads as a ``TransformerBridge`` with the same hook names as the
Hugging Face models and ``cfg.attn_only == True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from circuitgraph.errors import ModelLoadError

__all__ = ["NATIVE_CONFIG", "WEIGHTS", "boot_native_dir", "is_native_dir", "save_native_dir"]

#: the marker file: a directory with it is booted natively, not through transformers
NATIVE_CONFIG = "tl_native_config.json"
WEIGHTS = "model.safetensors"


def is_native_dir(path: str | Path) -> bool:
    """Whether ``path`` is a TL-native model directory.

    Example:
        >>> is_native_dir("/nonexistent")
        False
    """
    return (Path(path) / NATIVE_CONFIG).is_file()


def save_native_dir(model: torch.nn.Module, config: dict[str, Any], path: str | Path) -> None:
    """Write a native model's config and weights (tokenizer files are saved separately).

    Example:
        >>> save_native_dir(native_model, {"n_layers": 2, ...}, "out/")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / NATIVE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS))


def boot_native_dir(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    model_name: str | None = None,
) -> Any:
    """Boot a ``TransformerBridge`` from a directory written by :func:`save_native_dir`.

    Example:
        >>> bridge = boot_native_dir(zoo.model_path("attn-only-2l"))  # doctest: +SKIP
    """
    from safetensors.torch import load_file
    from transformer_lens.model_bridge.sources.native import boot
    from transformers import AutoTokenizer

    path = Path(path)
    config = json.loads((path / NATIVE_CONFIG).read_text())
    # The weights are loaded right after, so skip the (seeded, slower) initialisation.
    config = {**config, "init_weights": False}
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    bridge = boot(
        config, tokenizer=tokenizer, device=device, dtype=dtype, model_name=model_name or path.name
    )
    state = load_file(str(path / WEIGHTS), device=str(device or "cpu"))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    _load_weights(bridge, state, path)
    return bridge


def _load_weights(bridge: Any, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load the native state dict; the bridge's own zero unembedding bias may stay unset."""
    result = bridge.load_state_dict(state, strict=False)
    current = bridge.original_model.state_dict()
    bad = [*result.unexpected_keys, *(k for k in result.missing_keys if bool(current[k].any()))]
    if bad:
        raise ModelLoadError(
            f"expected the weights in {path / WEIGHTS} to match {NATIVE_CONFIG} but {bad[:4]} "
            "do not; re-run the training script that wrote the directory"
        )
