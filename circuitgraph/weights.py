"""The model's weights that edge methods read, fetched once per call.

Edge attribution pushes a source's output and a target's gradient through the attention
projections and norms; these are the only places such weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["AttnWeights", "attn_weights", "norm_module"]


@dataclass(frozen=True)
class AttnWeights:
    """Stacked attention projections: ``[layer, head, ...]`` (KV heads for K and V)."""

    W_Q: Float[Tensor, "l h d e"]
    W_K: Float[Tensor, "l kv d e"]
    W_V: Float[Tensor, "l kv d e"]
    W_O: Float[Tensor, "l h e d"]

    def w_in(self, kind: str, layer: int) -> Float[Tensor, "h d e"]:
        """The projection of a q/k/v target: ``[heads, d_model, d_head]``."""
        return {"q": self.W_Q, "k": self.W_K, "v": self.W_V}[kind][layer]


def attn_weights(model: Any) -> AttnWeights:
    """Read W_Q, W_K, W_V, W_O from a ``TransformerBridge`` (detached, model dtype/device).

    Example:
        >>> w = attn_weights(model)  # doctest: +SKIP
        >>> w.W_O.shape  # doctest: +SKIP
        torch.Size([2, 4, 8, 32])
    """
    with torch.no_grad():
        return AttnWeights(
            model.W_Q.detach(), model.W_K.detach(), model.W_V.detach(), model.W_O.detach()
        )


def norm_module(model: Any, kind: str, layer: int) -> Any:
    """The norm in front of a target: ``ln1`` for q/k/v, ``ln2`` for an MLP, final for logits.

    The wrapped module itself, not the bridge component: calling it fires no hook points, so
    it is safe to call from inside a hook (where the bridge's own norm would re-enter it).
    """
    if kind == "logits":
        bridge = model.ln_final
    else:
        bridge = model.blocks[layer].ln1 if kind in ("q", "k", "v") else model.blocks[layer].ln2
    return getattr(bridge, "original_component", None) or bridge
