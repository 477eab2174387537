"""How sources write to and targets read the residual stream, from the model's weights.

Edge patching and edge attribution push a source's output and a target's gradient through
the attention projections and norms; these are the only places such weights are read.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import hooks, source_hook
from circuitgraph.nodes import Node

__all__ = [
    "AttnWeights",
    "attn_weights",
    "norm_module",
    "norm_vjp",
    "shift_target",
    "source_outputs",
]


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


NormVJP = Callable[[Any, Tensor, Tensor], Tensor]

#: norm module → its closed-form VJP, or None where that form did not match autograd's
_CHECKED: weakref.WeakKeyDictionary[Any, NormVJP | None] = weakref.WeakKeyDictionary()


def norm_vjp(
    norm: Any, x: Float[Tensor, "b t d"], g: Float[Tensor, "v b t d"]
) -> Float[Tensor, "v b t d"]:
    """Jᵀg of a per-position norm at ``x``, for ``v`` cotangents at once.

    LayerNorm and RMSNorm have a closed form, cheaper than differentiating ``v`` copies of
    ``x`` (most of edge attribution's overhead on small models). It is used for a module
    only once it has matched autograd on that module; anything else goes through autograd.

    Example:
        >>> ln = torch.nn.LayerNorm(4)
        >>> x, g = torch.randn(2, 3, 4), torch.randn(5, 2, 3, 4)
        >>> torch.allclose(norm_vjp(ln, x, g), _autograd_vjp(ln, x, g), atol=1e-5)
        True
    """
    if norm not in _CHECKED:
        # a random cotangent: a real one may be zero (a target the metric ignores) and pass
        # any formula
        gen = torch.Generator(device=g.device).manual_seed(1729)
        probe = torch.randn(g[:1].shape, generator=gen, device=g.device, dtype=g.dtype)
        _CHECKED[norm] = _verified(norm, x, probe)
    closed = _CHECKED[norm]
    return (closed or _autograd_vjp)(norm, x, g)


def _verified(norm: Any, x: Tensor, g: Tensor) -> NormVJP | None:
    closed = _closed_form(norm, x.shape[-1])
    if closed is None:
        return None
    want = _wide(_autograd_vjp(norm, x, g))
    got = _wide(closed(norm, x, g))
    # half precision: the module's own rounding (about 1e-2 relative in bfloat16) dominates;
    # the type and parameter gate above already rules out formulas of another shape
    tol = max(1e-4, 10 * torch.finfo(x.dtype).eps) if x.dtype.is_floating_point else 1e-4
    return closed if (got - want).abs().max() <= tol * (want.abs().max() + 1e-12) else None


def _closed_form(norm: Any, d: int) -> NormVJP | None:
    """The VJP formula this module claims to follow, from its type and attributes.

    Its parameters must be exactly what the formula reads (``weight``, and ``bias`` for
    LayerNorm), each of size d: a scale stored elsewhere (say ``w``) could equal one when
    checked and differ later.
    """
    params = dict(norm.named_parameters()) if isinstance(norm, torch.nn.Module) else {}
    if any(tuple(p.shape) != (d,) for p in params.values()):
        return None
    if isinstance(norm, torch.nn.LayerNorm):
        fits = tuple(norm.normalized_shape) == (d,) and set(params) <= {"weight", "bias"}
        return _layer_norm_vjp if fits else None
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if "RMSNorm" in type(norm).__name__ and isinstance(eps, float) and set(params) <= {"weight"}:
        return _rms_norm_vjp
    return None


def _autograd_vjp(norm: Any, x: Tensor, g: Tensor) -> Tensor:
    v, b, t, d = g.shape
    with torch.enable_grad():
        x_rep = x.detach().expand(v, b, t, d).reshape(v * b, t, d).requires_grad_(True)
        (gx,) = torch.autograd.grad(norm(x_rep), x_rep, g.reshape(v * b, t, d))
    return gx.view(v, b, t, d)


def _rms_norm_vjp(norm: Any, x: Tensor, g: Tensor) -> Tensor:
    """y = w ⊙ x / r, r = √(mean x² + ε): Jᵀg = (ĝ − x̂ · mean(ĝ ⊙ x̂)) / r, ĝ = w ⊙ g."""
    xf = _wide(x)
    inv_r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + float(_eps(norm)))
    return _project_out(norm, xf * inv_r, inv_r, g, centre=False)


def _layer_norm_vjp(norm: Any, x: Tensor, g: Tensor) -> Tensor:
    """y = w ⊙ x̂ + b, x̂ = (x − μ) / σ: Jᵀg = (ĝ − mean ĝ − x̂ · mean(ĝ ⊙ x̂)) / σ."""
    xc = _wide(x) - _wide(x).mean(-1, keepdim=True)
    inv_sigma = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + float(norm.eps))
    return _project_out(norm, xc * inv_sigma, inv_sigma, g, centre=True)


def _project_out(norm: Any, x_hat: Tensor, inv_scale: Tensor, g: Tensor, centre: bool) -> Tensor:
    weight = getattr(norm, "weight", None)
    g_hat = _wide(g) if weight is None else _wide(g) * weight.detach().to(x_hat.dtype)
    if centre:
        g_hat = g_hat - g_hat.mean(-1, keepdim=True)
    g_hat = g_hat - x_hat * (g_hat * x_hat).mean(-1, keepdim=True)
    return (g_hat * inv_scale).to(g.dtype)


def _wide(t: Tensor) -> Tensor:
    """At least float32: half-precision statistics lose too much (the models' norms agree)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0)))


def source_outputs(
    acts: dict[str, Tensor], sources: Sequence[Node], weights: AttnWeights
) -> Float[Tensor, "b t s d"]:
    """Each source's write to the residual stream: embedding, z_h · W_O[h], MLP output.

    Example:
        >>> outs = source_outputs(captured, [Node("input"), Node("head", 0, 1)], w)  # doctest: +SKIP
    """
    per_layer: dict[int, Tensor] = {}
    cols = []
    for node in sources:
        if node.kind == "head":
            if node.layer not in per_layer:
                z = acts[hooks.z(node.layer)]
                per_layer[node.layer] = torch.einsum("bthe,hed->bthd", z, weights.W_O[node.layer])
            cols.append(per_layer[node.layer][:, :, node.index])
        else:
            cols.append(acts[source_hook(node)])
    return torch.stack(cols, dim=2)


def shift_target(
    model: Any,
    weights: AttnWeights,
    target: Node,
    x: Float[Tensor, "n b t d"] | None,
    shift: Float[Tensor, "n b t d"],
) -> Tensor:
    """The change at ``target_site(target)`` when the target's residual input x moves by shift.

    q/k/v: (N(x + shift) − N(x)) W[head] with N the head's norm; MLP: N(x + shift) − N(x);
    logits: the shift itself (the final norm comes after the site).
    """
    if target.kind == "logits":
        return shift
    assert x is not None
    norm = norm_module(model, target.kind, target.layer)
    n, b, t, d = shift.shape
    moved = norm((x + shift).reshape(n * b, t, d)) - norm(x.reshape(n * b, t, d))
    moved = moved.view(n, b, t, d)
    if target.kind == "mlp":
        return moved
    w = weights.w_in(target.kind, target.layer)[target.index]  # [d_model, d_head]
    return moved @ w.to(moved.dtype)
