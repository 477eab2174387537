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

from circuitgraph.arch import Arch, hooks
from circuitgraph.nodes import Node

__all__ = [
    "AttnWeights",
    "SourceGaps",
    "attn_weights",
    "norm_module",
    "norm_vjp",
    "normed",
    "shift_target",
    "source_deltas",
]


@dataclass(frozen=True)
class AttnWeights:
    """Stacked attention projections ``[layer, head, ...]`` (KV heads for K and V) and
    their biases (zero where the model has none)."""

    W_Q: Float[Tensor, "l h d e"]
    W_K: Float[Tensor, "l kv d e"]
    W_V: Float[Tensor, "l kv d e"]
    W_O: Float[Tensor, "l h e d"]
    b_Q: Float[Tensor, "l h e"]
    b_K: Float[Tensor, "l kv e"]
    b_V: Float[Tensor, "l kv e"]
    b_O: Float[Tensor, "l d"]

    def w_in(self, kind: str, layer: int) -> Float[Tensor, "h d e"]:
        """The projection of a q/k/v target: ``[heads, d_model, d_head]``."""
        return {"q": self.W_Q, "k": self.W_K, "v": self.W_V}[kind][layer]

    def b_in(self, kind: str, layer: int) -> Float[Tensor, "h e"]:
        return {"q": self.b_Q, "k": self.b_K, "v": self.b_V}[kind][layer]


def attn_weights(model: Any) -> AttnWeights:
    """Read W_Q, W_K, W_V, W_O and their biases from a ``TransformerBridge`` (detached,
    model dtype/device).

    Read anew on every call: a write through ``.data`` changes neither a parameter's
    storage nor its version, so no cheap stamp could tell kept stacks from stale ones.

    Example:
        >>> w = attn_weights(model)  # doctest: +SKIP
        >>> w.W_O.shape  # doctest: +SKIP
        torch.Size([2, 4, 8, 32])
    """
    with torch.no_grad():
        mats = [model.W_Q.detach(), model.W_K.detach(), model.W_V.detach(), model.W_O.detach()]
        biases = [
            _bias(model, f"b_{x}", (w.shape[0], w.shape[1], w.shape[3]), w)
            for x, w in zip("QKV", mats[:3], strict=True)
        ]
        w_o = mats[3]
        biases.append(_bias(model, "b_O", (w_o.shape[0], w_o.shape[3]), w_o))
        return AttnWeights(*mats, *biases)


def _bias(model: Any, name: str, want: tuple[int, ...], like: Tensor) -> Tensor:
    """The bias, or zeros where the model has none (the bridge raises AttributeError)."""
    try:
        bias = getattr(model, name)
    except (AttributeError, RuntimeError, KeyError):
        bias = None
    if not isinstance(bias, Tensor) or tuple(bias.shape) != want:
        return torch.zeros(want, dtype=like.dtype, device=like.device)
    return bias.detach()


def norm_module(model: Any, kind: str, layer: int) -> Any | None:
    """The norm in front of a target (:meth:`~circuitgraph.arch.Arch.norm`; None: none).

    The wrapped module itself, not the bridge component: calling it fires no hook points, so
    it is safe to call from inside a hook (where the bridge's own norm would re-enter it).
    """
    return Arch.of(model).norm(model, kind, layer)


def normed(norm: Any | None, x: Tensor) -> Tensor:
    """``norm(x)``, or x itself where the target reads the residual stream unnormed."""
    return x if norm is None else norm(x)


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
    """(ĝ − [mean ĝ] − x̂ · mean(ĝ ⊙ x̂)) · inv_scale, ĝ = w ⊙ g, for v cotangents at once.

    The means are dot products of g with w and w ⊙ x̂, and the rest is done in place, so
    the only [v, b, t, d] tensors made are the result and one product (this runs once per
    norm for every target behind it: EAP's largest cost after the model's own passes).
    """
    weight = getattr(norm, "weight", None)
    # one working dtype for every operand (at least float32): matrix products do not promote
    work = torch.promote_types(torch.promote_types(g.dtype, torch.float32), x_hat.dtype)
    gf, x_hat, inv_scale = g.to(work), x_hat.to(work), inv_scale.to(work)
    d = gf.shape[-1]
    w = None if weight is None else weight.detach().to(work)
    out = gf.clone() if w is None else gf * w
    if centre:
        out.sub_((gf.sum(-1) if w is None else gf @ w).unsqueeze(-1) / d)
    # centred, x̂ has mean 0, so mean(ĝ ⊙ x̂) needs no centring of ĝ first
    wx = x_hat if w is None else x_hat * w
    out.addcmul_(x_hat, (gf * wx).sum(-1, keepdim=True), value=-1.0 / d)
    return out.mul_(inv_scale).to(g.dtype)


def _wide(t: Tensor) -> Tensor:
    """At least float32: half-precision statistics lose too much (the models' norms agree)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0)))


def source_deltas(
    model: Any,
    base: dict[str, Tensor],
    src: dict[str, Tensor],
    sources: Sequence[Node],
    weights: AttnWeights,
) -> Float[Tensor, "b t s d"]:
    """Δout_u = out_u(src) − out_u(base) for each source: what it adds to the residual.

    The embedding and an MLP: the difference of their writes. A head: (z_h' − z_h)·W_O[h]
    (the output bias belongs to no head); under a post-attention norm P (Gemma2/3, OLMo2)
    the heads' writes do not add up, and a head's is what the attention block adds when
    only that head changes, P(o(z with z_h ← z_h')) − P(o(z)), the same shift that patching
    the head's node causes.

    Example:
        >>> d = source_deltas(model, clean, corrupt, [Node("head", 0, 1)], w)  # doctest: +SKIP
    """
    arch = Arch.of(model)
    per_layer: dict[int, Tensor] = {}
    cols = []
    for node in sources:
        if node.kind == "head":
            if node.layer not in per_layer:
                per_layer[node.layer] = _head_deltas(model, arch, base, src, node.layer, weights)
            cols.append(per_layer[node.layer][:, :, node.index])
        else:
            name = arch.source_hook(node)
            cols.append(src[name] - base[name])
    return torch.stack(cols, dim=2)


def _head_writes(
    z: Float[Tensor, "b t h e"], layer: int, weights: AttnWeights
) -> Float[Tensor, "b t h d"]:
    """Each head's write z_h·W_O[h] (of a difference of z's: the change of its write)."""
    return torch.einsum("bthe,hed->bthd", z, weights.W_O[layer].to(z.dtype))


def _head_moves(
    base: dict[str, Tensor], src: dict[str, Tensor], layer: int, weights: AttnWeights
) -> Float[Tensor, "b t h d"]:
    """Each head's change of its write, (z_h' − z_h)·W_O[h]: one product of the difference."""
    z = hooks.z(layer)
    return _head_writes(src[z] - base[z], layer, weights)


def _head_deltas(
    model: Any,
    arch: Arch,
    base: dict[str, Tensor],
    src: dict[str, Tensor],
    layer: int,
    weights: AttnWeights,
) -> Float[Tensor, "b t h d"]:
    moved = _head_moves(base, src, layer, weights)
    post = arch.post_norm_module(model, layer)
    if post is None:
        return moved
    o = _attn_write(base, layer, weights)
    with torch.no_grad():  # a difference of values: no graph through the norm's weights
        return post(o.unsqueeze(2) + moved) - post(o).unsqueeze(2)


def _attn_write(
    acts: dict[str, Tensor], layer: int, weights: AttnWeights
) -> Float[Tensor, "b t d"]:
    """The attention block's output projection o(z) = Σ_h z_h W_O[h] + b_O (before a post-norm)."""
    z = acts[hooks.z(layer)]
    return _head_writes(z, layer, weights).sum(2) + weights.b_O[layer].to(z.dtype)


class SourceGaps:
    """Δout of every source against a live run, filled in as the sources fire, and the
    shift of each target's input when a set of its sources is seen at ``src``.

    A target v's shift is Σ_u Δout_u over its marked sources, except that heads of one
    post-norm layer change together, P(o(z with all those heads ← src)) − P(o(z)): their
    writes do not add up. Each source's hook is read once (:meth:`update`), so a circuit
    run costs what the sources cost, not that times the number of targets.

    Example:
        >>> gaps = SourceGaps(model, sources, weights, corrupt_acts)  # doctest: +SKIP
        >>> gaps.update(name, live_acts); gaps.shifts(mask)  # doctest: +SKIP
    """

    def __init__(
        self, model: Any, sources: Sequence[Node], weights: AttnWeights, src: dict[str, Tensor]
    ) -> None:
        self.model, self.arch, self.weights, self.src = model, Arch.of(model), weights, src
        self.sources = list(sources)
        self.joint = self.arch.post_norm
        self.cols: dict[str, list[int]] = {}
        for i, node in enumerate(self.sources):
            self.cols.setdefault(self.arch.source_hook(node), []).append(i)
        self.gap: Tensor | None = None  # [b, t, S, d]: Δout of each source (post-norm heads: 0)
        self.moved: dict[int, Tensor] = {}  # post-norm layer → each head's change of o(z)
        self.write: dict[int, Tensor] = {}  # post-norm layer → the live o(z)

    def update(self, name: str, live: dict[str, Tensor]) -> None:
        """Read the sources at hook ``name`` from the live activations (as it fires)."""
        cols = self.cols.get(name, [])
        if not cols:
            return
        nodes = [self.sources[i] for i in cols]
        if self.joint and nodes[0].kind == "head":
            layer, w = nodes[0].layer, self.weights
            self.moved[layer] = _head_moves(live, self.src, layer, w)
            self.write[layer] = _attn_write(live, layer, w)
            return
        d = source_deltas(self.model, live, self.src, nodes, self.weights)
        if self.gap is None:
            b, t, _, width = d.shape
            self.gap = d.new_zeros(b, t, len(self.sources), width)
        self.gap[:, :, cols] = d

    def shifts(self, mask: Float[Tensor, "s v"]) -> Float[Tensor, "v b t d"]:
        """The input shift of each target (column of ``mask``) when the sources it marks
        are seen at ``src``; every marked source must have fired."""
        like = self.gap if self.gap is not None else next(iter(self.write.values()))
        b, t, width = like.shape[0], like.shape[1], like.shape[-1]
        out = like.new_zeros(mask.shape[1], b, t, width)
        mask = mask.to(like.dtype)
        if self.gap is not None:
            out += torch.einsum("btsd,sv->vbtd", self.gap, mask)
        for layer, moved in self.moved.items():
            rows = [i for i, n in enumerate(self.sources) if n.kind == "head" and n.layer == layer]
            heads = [self.sources[i].index for i in rows]
            pick = mask[rows]
            if not bool(pick.ne(0).any()):
                continue
            o = self.write[layer]
            mixed = o.unsqueeze(0) + torch.einsum("bthd,hv->vbtd", moved[:, :, heads], pick)
            post = self.arch.post_norm_module(self.model, layer)
            assert post is not None  # joint layers are post-norm layers
            with torch.no_grad():
                out += post(mixed) - post(o).unsqueeze(0)
        return out


def shift_target(
    model: Any,
    weights: AttnWeights,
    target: Node,
    x: Float[Tensor, "n b t d"] | None,
    shift: Float[Tensor, "n b t d"],
) -> Tensor:
    """The change at ``Arch.target_site(target)`` when the target's residual input x moves
    by shift.

    q/k/v: (N(x + shift) − N(x)) W[head] with N the head's norm (the identity where there
    is none); under a QK-norm over all heads jointly the target site is the norm's output,
    Q(N(x + shift) W + b)[head] − Q(N(x) W + b)[head]; MLP: N(x + shift) − N(x); logits: the
    shift itself (the final norm comes after the site).
    """
    if target.kind == "logits":
        return shift
    assert x is not None
    arch = Arch.of(model)
    norm = arch.norm(model, target.kind, target.layer)
    n, b, t, d = shift.shape
    moved = normed(norm, (x + shift).reshape(n * b, t, d)) - normed(norm, x.reshape(n * b, t, d))
    moved = moved.view(n, b, t, d)
    if target.kind == "mlp":
        return moved
    if target.kind in ("q", "k") and arch.qk_norm == "joint":
        return _joint_normed_change(model, arch, weights, target, x, moved)
    w = weights.w_in(target.kind, target.layer)[target.index]  # [d_model, d_head]
    return moved @ w.to(moved.dtype)


def _joint_normed_change(
    model: Any, arch: Arch, weights: AttnWeights, target: Node, x: Tensor, moved: Tensor
) -> Float[Tensor, "n b t e"]:
    """Q(p + Δp)[head] − Q(p)[head], p = N(x) W + b of all heads, Q the joint QK-norm."""
    kind, layer = target.kind, target.layer
    n, b, t, d = x.shape
    w, bias = weights.w_in(kind, layer), weights.b_in(kind, layer)
    norm = arch.norm(model, kind, layer)
    p = torch.einsum("nbtd,hde->nbthe", normed(norm, x.reshape(n * b, t, d)).view(n, b, t, d), w)
    p = p + bias
    dp = torch.einsum("nbtd,hde->nbthe", moved, w)
    after = arch.apply_qk_norm(model, kind, layer, (p + dp).reshape(n * b, t, *p.shape[-2:]))
    before = arch.apply_qk_norm(model, kind, layer, p.reshape(n * b, t, *p.shape[-2:]))
    return (after - before).view(n, b, t, *p.shape[-2:])[..., target.index, :]
