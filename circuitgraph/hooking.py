"""Attaching hooks and switching model flags, always undone (on error too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from circuitgraph.model import require_eval

__all__ = ["HookFn", "attached", "model_flags"]

HookFn = Callable[..., Any]

_FLAG_SETTERS = {
    "use_split_qkv_input": "set_use_split_qkv_input",
    "use_attn_result": "set_use_attn_result",
    "use_hook_mlp_in": "set_use_hook_mlp_in",
}


@contextmanager
def attached(
    model: Any,
    fwd: Sequence[tuple[str, HookFn]] = (),
    bwd: Sequence[tuple[str, HookFn]] = (),
) -> Iterator[Any]:
    """Attach forward/backward hooks for the duration of the block; refuse train mode.

    Example:
        >>> with attached(model, fwd=[("hook_embed", fn)]):  # doctest: +SKIP
        ...     model(tokens)
    """
    require_eval(model)
    with model.hooks(fwd_hooks=list(fwd), bwd_hooks=list(bwd)):
        yield model


@contextmanager
def model_flags(model: Any, **flags: bool) -> Iterator[Any]:
    """Set bridge hook flags (``use_split_qkv_input`` ...) and restore the old values after.

    Example:
        >>> with model_flags(model, use_split_qkv_input=True):  # doctest: +SKIP
        ...     ...
    """
    old = {name: bool(getattr(model.cfg, name, False)) for name in flags}
    try:
        for name, value in flags.items():
            if old[name] != value:
                getattr(model, _FLAG_SETTERS[name])(value)
        yield model
    finally:
        for name, value in old.items():
            if bool(getattr(model.cfg, name, False)) != value:
                getattr(model, _FLAG_SETTERS[name])(value)
