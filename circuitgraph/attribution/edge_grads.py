"""∂L/∂in_v for edge targets: the gradient at each target's own hook pulled back through its
projection and norm (DESIGN §2, Edges).

A head's q/k/v input gets its gradient from the head's q/k/v by a vector–Jacobian product
through W_Q/W_K/W_V and the head's norm, one layer at a time, so no per-head copy of the
residual stream is ever kept. An MLP's input gets it from its norm's output, the logits
from the final norm's input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import grad_hook, hooks, norm_input_hook
from circuitgraph.nodes import Node
from circuitgraph.weights import AttnWeights, norm_module, norm_vjp

__all__ = [
    "TargetGroup",
    "input_grad_blocks",
    "input_grads",
    "normed_grad",
    "target_groups",
]


@dataclass(frozen=True)
class TargetGroup:
    """Candidate targets that share one gradient hook: a layer's q, k or v heads, an MLP, logits."""

    kind: str
    layer: int
    cols: list[int]  # columns of the candidates' targets
    heads: list[int]  # head (or KV head) index of each column; empty for mlp / logits


def target_groups(targets: Sequence[Node]) -> list[TargetGroup]:
    groups: dict[tuple[str, int], TargetGroup] = {}
    for j, t in enumerate(targets):
        g = groups.setdefault((t.kind, t.layer), TargetGroup(t.kind, t.layer, [], []))
        g.cols.append(j)
        if t.index is not None:
            g.heads.append(t.index)
    return list(groups.values())


def input_grads(
    model: Any,
    groups: Sequence[TargetGroup],
    grads: dict[str, Tensor],
    acts: dict[str, Tensor],
    weights: AttnWeights,
    n_targets: int,
    like: Float[Tensor, "b t d"],
) -> Float[Tensor, "v b t d"]:
    """∂L/∂in_v for the targets of ``groups``, in the candidates' columns (zero elsewhere),
    shaped, typed and placed like the residual stream ``like``.

    Example:
        >>> g_in = input_grads(model, groups, grads, acts, weights, len(targets), resid)  # doctest: +SKIP
    """
    out = like.new_zeros(n_targets, *like.shape)
    for cols, block in input_grad_blocks(model, groups, grads, acts, weights):
        out[cols] = block.to(out.dtype)
    return out


def input_grad_blocks(
    model: Any,
    groups: Sequence[TargetGroup],
    grads: dict[str, Tensor],
    acts: dict[str, Tensor],
    weights: AttnWeights,
) -> Iterator[tuple[list[int], Float[Tensor, "v b t d"]]]:
    """(columns, ∂L/∂in_v of those targets), one norm at a time.

    The gradient at each group's hook is pulled back through its projection, then through
    its norm: one vector–Jacobian product per norm for all the cotangents that meet there
    (a layer's q, k and v heads share ln1, its MLP ln2; the logits read the final norm's
    input directly), so no more than one norm's cotangents are alive at once.

    Example:
        >>> blocks = list(input_grad_blocks(model, groups, grads, acts, weights))  # doctest: +SKIP
    """
    at_norm: dict[str | None, list[TargetGroup]] = {}
    for g in groups:
        at_norm.setdefault(norm_input_hook(g.kind, g.layer), []).append(g)
    for x_name, members in at_norm.items():
        cols = [c for g in members for c in g.cols]
        if x_name is None:
            yield cols, grads[hooks.final_in].unsqueeze(0)
            continue
        cotangents = torch.cat([normed_grad(g, grads, weights) for g in members])
        norm = norm_module(model, members[0].kind, members[0].layer)
        yield cols, norm_vjp(norm, acts[x_name], cotangents)


def normed_grad(
    group: TargetGroup, grads: dict[str, Tensor], weights: AttnWeights
) -> Float[Tensor, "v b t d"]:
    """The gradient at the output of the group's norm, one cotangent per target."""
    g = grads[grad_hook(group.kind, group.layer)]
    if group.kind == "mlp":
        return g.unsqueeze(0)
    w = weights.w_in(group.kind, group.layer)[group.heads]  # [v, d_model, d_head]
    return torch.einsum("btve,vde->vbtd", g[:, :, group.heads], w)
