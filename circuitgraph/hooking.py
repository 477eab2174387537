"""Attaching hooks, always undone (on error too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from circuitgraph.model import require_eval

__all__ = ["HookFn", "attached"]

HookFn = Callable[..., Any]


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
