"""Edge AtP*: the QK fix for edges into a head's query or key, and GradDrop on every edge.

For an edge u → v where v is head h's query (or key) input in layer l (DESIGN §2, Edges):
push Δout_u through the target's norm and W_Q (W_K) exactly,

    Δq_h = (LN(x + Δout_u) − LN(x)) W_Q[h]        (rotated, for rotary models),

recompute the attention pattern with that query (key) and linearise only downstream of it:
Î = Σ_ts (A'_ts − A_ts) ∂L/∂A_ts, summed over the query heads that read a KV head. Other
targets use EAP's Δout_u · ∂L/∂in_v.

GradDrop (AtP*, cancellation): each backward with layer l's residual writes cut gives
Î_l(u → v); ĉ = E[(1/|D_v|) Σ_{l ∈ D_v} |Î_l|], where D_v are the layers that do not sit
on v's own output path (all but v's layer; all L for the logits). Cutting a layer below v
leaves ∂L/∂in_v unchanged, so only the layers above the lowest target are run. An edge
with only a direct path therefore scores exactly |Î|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import (
    grad_hook,
    hooks,
    norm_input_hook,
    qk_hooks,
    residual_writes,
    source_hook,
)
from circuitgraph.attribution import qk_fix
from circuitgraph.attribution.candidates import EdgeSet
from circuitgraph.attribution.edge_grads import TargetGroup, input_grads, target_groups
from circuitgraph.attribution.registry import register
from circuitgraph.errors import ModelStateError
from circuitgraph.model import ModelInfo, model_info
from circuitgraph.run import BatchRun, Plan, RunOptions, clean_run
from circuitgraph.scores import EdgeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, norm_module, source_outputs

__all__ = ["edge_atp_star", "rotate"]


def rotate(x: Float[Tensor, "b t h d"], cos: Tensor, sin: Tensor) -> Float[Tensor, "b t h d"]:
    """Rotary embedding in the rotate-half convention (Llama, Mistral, Qwen, Gemma, ...).

    ``cos``/``sin`` are ``[1 or b, t, d]``; the rotation is linear, so it maps a change in
    q (or k) to the change in rotated q (or k).
    """
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(2) + turned * sin.unsqueeze(2)


@dataclass(frozen=True)
class _QKLayer:
    """What the QK fix of one layer needs from the clean run."""

    s: Float[Tensor, "b h t s"]  # scores (up to a row constant), masked entries −inf
    a: Float[Tensor, "b h t s"]
    top: Tensor
    q: Float[Tensor, "b t h d"]  # rotated where the model rotates
    k: Float[Tensor, "b s g d"]
    scale: float
    cos: Tensor | None
    sin: Tensor | None


@register("atp*", "edge")
def edge_atp_star(
    model: Any, pairs: PromptPairs, cands: EdgeSet, metric: Metric, opts: RunOptions
) -> EdgeScores:
    """Edge AtP*: QK fix on q/k targets, GradDrop on all (2 forward + 1 + L' backward).

    Example:
        >>> scores = edge_atp_star(model, pairs, cands, metric, RunOptions())  # doctest: +SKIP
    """
    info = model_info(model)
    weights = attn_weights(model)
    groups = target_groups(cands.targets)
    qk_layers = sorted({g.layer for g in groups if g.kind in ("q", "k")})
    lowest = min((g.layer for g in groups if g.kind != "logits"), default=info.n_layers)
    drops = tuple(range(lowest + 1, info.n_layers))
    plan = _plan(model, info, cands, groups, qk_layers, drops)
    signed = torch.zeros(len(cands.sources), len(cands.targets), dtype=torch.float64)
    dropped = torch.zeros_like(signed)

    def body(run: BatchRun) -> tuple[Tensor, Tensor]:
        return _batch(model, run, info, cands, groups, qk_layers, drops, weights)

    for batch in opts.batches(pairs):
        work = batch if opts.mode == "noising" else batch.swapped()
        plain, gd = clean_run(model, work, metric, plan, opts.mode, body)
        signed += plain.cpu()
        dropped += gd.cpu()
        opts.advance(len(batch))
    norm = torch.tensor(
        [info.n_layers if t.kind == "logits" else max(info.n_layers - 1, 1) for t in cands.targets]
    )
    valid = cands.valid
    # where, not a product, as in eap: an overflowed non-edge must not become NaN
    signed, dropped = opts.reduce(signed), opts.reduce(dropped)
    signed = torch.where(valid, signed / len(pairs), 0.0)
    score = torch.where(valid, dropped / (len(pairs) * norm), 0.0)
    return EdgeScores(
        cands.sources, cands.targets, signed, score, valid.clone(), "atp*", metric.name,
        len(pairs), forward_passes=2.0, backward_passes=1.0 + len(drops),
        meta={"mode": opts.mode, "ranked_by": "E[(1/|D_v|) sum_l |I_l|] (GradDrop)",
              "dropped_layers": list(drops)},
    )  # fmt: skip


def _plan(
    model: Any,
    info: ModelInfo,
    cands: EdgeSet,
    groups: Sequence[TargetGroup],
    qk_layers: Sequence[int],
    drops: Sequence[int],
) -> Plan:
    both = {source_hook(s) for s in cands.sources}
    clean = {n for g in groups if (n := norm_input_hook(g.kind, g.layer))}
    grads = {grad_hook(g.kind, g.layer) for g in groups if g.kind not in ("q", "k")}
    for layer in qk_layers:
        clean |= {*qk_hooks(info.rotary, layer), hooks.pattern(layer), hooks.scores(layer)}
        if info.rotary:  # cos, sin and the unrotated q check the rotation convention
            clean |= {hooks.rot_cos(layer), hooks.rot_sin(layer), hooks.q(layer)}
        grads.add(hooks.pattern(layer))
    available = set(model.hook_dict)
    missing = sorted((both | clean | grads) - available)
    if missing:
        raise ModelStateError(
            f"edge atp* needs the hooks {missing} but this model has none of that name; use "
            "edge method 'eap' for it"
        )
    writes = residual_writes(drops, available)
    return Plan(tuple(sorted(both)), tuple(sorted(clean - both)), tuple(sorted(grads)), writes)


def _batch(
    model: Any,
    run: BatchRun,
    info: ModelInfo,
    cands: EdgeSet,
    groups: Sequence[TargetGroup],
    qk_layers: Sequence[int],
    drops: Sequence[int],
    weights: AttnWeights,
) -> tuple[Float[Tensor, "s v"], Float[Tensor, "s v"]]:
    """Σ over pairs of Î (plain) and of Σ_{l ∈ D_v} |Î_l| (GradDrop) for every edge."""
    delta = source_outputs(run.noise, cands.sources, weights) - source_outputs(
        run.clean, cands.sources, weights
    )
    layers = {layer: _qk_layer(model, run, info, layer) for layer in qk_layers}
    changes = {
        id(g): _pattern_changes(model, run, info, g, delta, layers[g.layer], weights)
        for g in groups
        if g.kind in ("q", "k")
    }

    b, t, n_src, d = delta.shape
    plain_groups = [g for g in groups if g.kind not in ("q", "k")]
    plain_cols = [c for g in plain_groups for c in g.cols]
    like = delta.new_empty(b, t, d)

    def effects(grads: dict[str, Tensor]) -> Float[Tensor, "b s v"]:
        out = delta.new_zeros(b, n_src, len(cands.targets))
        for g in groups:
            if g.kind in ("q", "k"):
                out[:, :, g.cols] = _qk_effects(
                    changes[id(g)], layers[g.layer], grads[hooks.pattern(g.layer)], g, info
                )
        n = len(cands.targets)
        g_in = input_grads(model, plain_groups, grads, run.clean, weights, n, like)[plain_cols]
        out[:, :, plain_cols] = torch.einsum("btsd,vbtd->bsv", delta, g_in)
        return out

    plain = effects(run.grads(None))
    below = torch.tensor(
        [info.n_layers if t.kind == "logits" else t.layer for t in cands.targets],
        device=plain.device, dtype=plain.dtype,
    )  # fmt: skip
    total = plain.abs() * below  # cutting a layer below v leaves Î unchanged
    for layer in drops:
        above = (below < layer).to(plain.dtype)  # targets this cut can reach (own layer: 0)
        total += effects(run.grads(layer)).abs() * above
    return plain.sum(0).double(), total.sum(0).double()


def _qk_layer(model: Any, run: BatchRun, info: ModelInfo, layer: int) -> _QKLayer:
    qn, kn = qk_hooks(info.rotary, layer)
    pattern = run.clean[hooks.pattern(layer)]
    scores = qk_fix.layer_scores(run.clean[hooks.scores(layer)], pattern)
    work = torch.promote_types(scores.dtype, torch.float32)
    allowed = qk_fix.readable(scores)
    s = scores.to(work).masked_fill(~allowed, qk_fix.NEG_INF)
    q, k = run.clean[qn].to(work), run.clean[kn].to(work)
    few = qk_fix.CHECK_PAIRS
    scale = qk_fix.fit_scale(scores[:few], q[:few], k[:few], pattern[:few], layer)
    cos = sin = None
    if info.rotary:
        cos, sin = (
            run.clean[hooks.rot_cos(layer)].to(work),
            run.clean[hooks.rot_sin(layer)].to(work),
        )
        _check_rotation(run, info, layer, cos, sin)
    return _QKLayer(
        s, s.softmax(-1), s.argmax(-1, keepdim=True), q, k, scale or info.d_head**-0.5, cos, sin
    )


def _check_rotation(run: BatchRun, info: ModelInfo, layer: int, cos: Tensor, sin: Tensor) -> None:
    """The rotate-half convention must reproduce the model's own rotated queries."""
    raw, rotated = run.clean[hooks.q(layer)], run.clean[hooks.rot_q(layer)]
    if raw.shape[-1] != cos.shape[-1] or not torch.allclose(
        rotate(raw.to(cos.dtype), cos, sin), rotated.to(cos.dtype), atol=1e-4, rtol=1e-3
    ):
        raise ModelStateError(
            f"edge atp* expects layer {layer}'s rotary embedding in the rotate-half convention "
            "over the whole head, but this model's differs; use edge method 'eap' for it"
        )


def _pattern_changes(
    model: Any,
    run: BatchRun,
    info: ModelInfo,
    group: TargetGroup,
    delta: Float[Tensor, "b t s d"],
    lay: _QKLayer,
    weights: AttnWeights,
) -> Float[Tensor, "u b h t s"]:
    """A' − A for every candidate source u, with Δout_u pushed exactly through the norm."""
    x = run.clean[norm_input_hook(group.kind, group.layer)]  # type: ignore[index]
    norm = norm_module(model, group.kind, group.layer)
    b, t, n_src, d = delta.shape
    with torch.no_grad():
        shifted = (x.unsqueeze(2) + delta).permute(2, 0, 1, 3).reshape(n_src * b, t, d)
        dn = (norm(shifted).view(n_src, b, t, d) - norm(x).unsqueeze(0)).to(lay.s.dtype)
        w = weights.w_in(group.kind, group.layer)[group.heads].to(lay.s.dtype)  # [v, d, e]
        change = torch.einsum("ubtd,vde->ubtve", dn, w).reshape(n_src * b, t, len(group.heads), -1)
        if lay.cos is not None:
            change = rotate(change, lay.cos, lay.sin)  # type: ignore[arg-type]
        change = change.view(n_src, b, t, len(group.heads), -1)
        return _shifted(lay, group, change, info)


def _shifted(lay: _QKLayer, group: TargetGroup, change: Tensor, info: ModelInfo) -> Tensor:
    """A' − A [u, v, b, h_v, t, s] where h_v are the query heads that read target v."""
    per_kv = info.heads_per_kv
    outs = []
    for j, head in enumerate(group.heads):
        if group.kind == "q":
            kv = head // per_kv
            ds = torch.einsum("ubte,bse->ubts", change[:, :, :, j], lay.k[:, :, kv])
            s, a = lay.s[:, head : head + 1], lay.a[:, head : head + 1]
            ds = ds.unsqueeze(2)  # one query head
        else:
            heads = slice(head * per_kv, (head + 1) * per_kv)
            ds = torch.einsum("bthe,ubse->ubhts", lay.q[:, :, heads], change[:, :, :, j])
            s, a = lay.s[:, heads], lay.a[:, heads]
        ds = (lay.scale * ds).masked_fill(~torch.isfinite(s).unsqueeze(0), 0.0)
        outs.append((s.unsqueeze(0) + ds).softmax(-1) - a.unsqueeze(0))
    return torch.stack(outs, dim=1)


def _qk_effects(
    change: Tensor,
    lay: _QKLayer,
    grad: Float[Tensor, "b h t s"],
    group: TargetGroup,
    info: ModelInfo,
) -> Float[Tensor, "b u v"]:
    """Σ_ts (A' − A)(g − g_top) per pair, source and target (ΣΔA = 0 in each row)."""
    g = grad.to(lay.a.dtype)
    g = g - g.gather(-1, lay.top)
    per_kv = info.heads_per_kv
    cols = []
    for j, head in enumerate(group.heads):
        heads = (
            slice(head, head + 1)
            if group.kind == "q"
            else slice(head * per_kv, (head + 1) * per_kv)
        )
        cols.append(torch.einsum("ubhts,bhts->bu", change[:, j], g[:, heads]))
    return torch.stack(cols, dim=-1)
