"""∂L/∂in_v for edge targets: the gradient at each target's own hook pulled back through its
projection and norm (DESIGN §2, Edges).

A head's q/k/v input gets its gradient from the head's q/k/v by a vector–Jacobian product
through W_Q/W_K/W_V and the head's norm, one layer at a time, so no per-head copy of the
residual stream is ever kept. An MLP's input gets it from its norm's output, the logits
from the final norm's input. Where a target has no norm (OLMo2) the VJP through it is the
identity; under a QK-norm over all heads jointly (OLMo2) a q/k target's gradient is read
after that norm and pulled back through it first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import Arch, hooks
from circuitgraph.nodes import Node
from circuitgraph.weights import AttnWeights, norm_vjp

__all__ = [
    "TargetGroup",
    "input_grad_blocks",
    "input_grads",
    "joint_norm_acts",
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


def joint_norm_acts(arch: Arch, groups: Sequence[TargetGroup]) -> list[str]:
    """Hooks a run must record for :func:`input_grad_blocks`: the projections in front of
    a joint QK-norm (its VJP is taken where the run was)."""
    if arch.qk_norm != "joint":
        return []
    return [{"q": hooks.q, "k": hooks.k}[g.kind](g.layer) for g in groups if g.kind in ("q", "k")]


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
    arch = Arch.of(model)
    # one block per norm and the residual it reads (a parallel block's MLP may read the
    # attention's residual through a norm of its own)
    at_norm: dict[tuple[str | None, int], tuple[Any, list[TargetGroup]]] = {}
    for g in groups:
        norm = arch.norm(model, g.kind, g.layer) if g.kind != "logits" else None
        key = (arch.norm_input_hook(g.kind, g.layer), id(norm))
        at_norm.setdefault(key, (norm, []))[1].append(g)
    for (x_name, _), (norm, members) in at_norm.items():
        cols = [c for g in members for c in g.cols]
        if x_name is None:
            yield cols, grads[hooks.final_in].unsqueeze(0)
            continue
        cotangents = torch.cat([normed_grad(model, g, grads, acts, weights) for g in members])
        yield cols, cotangents if norm is None else norm_vjp(norm, acts[x_name], cotangents)


def normed_grad(
    model: Any,
    group: TargetGroup,
    grads: dict[str, Tensor],
    acts: dict[str, Tensor],
    weights: AttnWeights,
) -> Float[Tensor, "v b t d"]:
    """The gradient at the output of the group's norm, one cotangent per target."""
    arch = Arch.of(model)
    name = arch.grad_hook(group.kind, group.layer)
    if group.kind == "mlp":
        return grads[name].unsqueeze(0)
    w = weights.w_in(group.kind, group.layer)
    if group.kind in ("q", "k") and arch.qk_norm == "joint":
        return _through_joint_norm(model, arch, group, grads[name], acts, w)
    g = arch.target_site(Node(group.kind, group.layer, 0)).view(grads[name])  # type: ignore[arg-type]
    return torch.einsum("btve,vde->vbtd", g[:, :, group.heads], w[group.heads])


def _through_joint_norm(
    model: Any,
    arch: Arch,
    group: TargetGroup,
    grad: Float[Tensor, "b t he"],
    acts: dict[str, Tensor],
    w: Float[Tensor, "h d e"],
) -> Float[Tensor, "v b t d"]:
    """Each head's gradient after a joint QK-norm Q, pulled back through Q (at the run's
    projection p) and all heads' projection: v cotangents at once."""
    h, e = w.shape[0], w.shape[-1]
    p = acts[{"q": hooks.q, "k": hooks.k}[group.kind](group.layer)]  # [b, t, h, e]
    g = grad.unflatten(-1, (h, e))
    v = len(group.heads)
    cot = g.new_zeros(v, *g.shape)
    for j, head in enumerate(group.heads):
        cot[j, :, :, head] = g[:, :, head]
    b, t = p.shape[:2]
    with torch.enable_grad():
        x = p.detach().expand(v, *p.shape).reshape(v * b, t, h, e).requires_grad_(True)
        out = arch.apply_qk_norm(model, group.kind, group.layer, x)
        (gp,) = torch.autograd.grad(out, x, cot.reshape(v * b, t, h, e))
    return torch.einsum("vbthe,hde->vbtd", gp.view(v, b, t, h, e), w.to(gp.dtype))
