"""Edge AtP*: the QK fix for edges into a head's query or key, and GradDrop on every edge.

For an edge u → v where v is head h's query (or key) input in layer l (DESIGN §2, Edges):
push Δout_u through the target's norm and W_Q (W_K) exactly,

    Δq_h = R(P(N(x + Δout_u)) − P(N(x)))[h]

(N the target's norm, P its projection with bias, clipping and QK-norm, R rotary),
recompute the attention pattern with that query (key) — soft-capped where the model caps
its scores — and linearise only downstream of it (∂L/∂A from the head outputs, see
:mod:`.qk_fix`):
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
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import Arch, hooks
from circuitgraph.attribution.candidates import EdgeSet
from circuitgraph.attribution.edge_grads import (
    TargetGroup,
    input_grads,
    joint_norm_acts,
    target_groups,
)
from circuitgraph.attribution.qk_fix import (
    LayerAttention,
    layer_attention,
    moved_logits,
    pattern_grad,
)
from circuitgraph.attribution.registry import register
from circuitgraph.attribution.sites import site_grad
from circuitgraph.run import BatchRun, Plan, RunOptions, clean_run
from circuitgraph.scores import EdgeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, normed, source_deltas

__all__ = ["edge_atp_star"]

METHOD = "the edge method 'eap' (discover --edge-method eap, edges --method eap)"


@register("atp*", "edge")
def edge_atp_star(
    model: Any, pairs: PromptPairs, cands: EdgeSet, metric: Metric, opts: RunOptions
) -> EdgeScores:
    """Edge AtP*: QK fix on q/k targets, GradDrop on all (2 forward + 1 + L' backward).

    Example:
        >>> scores = edge_atp_star(model, pairs, cands, metric, RunOptions())  # doctest: +SKIP
    """
    arch = Arch.of(model)
    info = arch.info
    weights = attn_weights(model)
    groups = target_groups(cands.targets)
    qk_layers = sorted({g.layer for g in groups if g.kind in ("q", "k")})
    lowest = min((g.layer for g in groups if g.kind != "logits"), default=info.n_layers)
    drops = tuple(range(lowest + 1, info.n_layers))
    plan = _plan(model, arch, cands, groups, qk_layers, drops)
    signed = torch.zeros(len(cands.sources), len(cands.targets), dtype=torch.float64)
    dropped = torch.zeros_like(signed)

    def body(run: BatchRun) -> tuple[Tensor, Tensor]:
        return _batch(model, arch, run, cands, groups, qk_layers, drops, weights)

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
    arch: Arch,
    cands: EdgeSet,
    groups: Sequence[TargetGroup],
    qk_layers: Sequence[int],
    drops: Sequence[int],
) -> Plan:
    both = {arch.source_hook(s) for s in cands.sources}
    clean = {n for g in groups if (n := arch.norm_input_hook(g.kind, g.layer))}
    clean |= set(joint_norm_acts(arch, groups))
    grads = {arch.grad_hook(g.kind, g.layer) for g in groups if g.kind not in ("q", "k")}
    for layer in qk_layers:
        both |= {*arch.qk_hooks(layer), hooks.pattern(layer)}
        clean |= {hooks.v(layer), hooks.z(layer), hooks.q(layer), hooks.k(layer)}
        clean |= {hooks.scores(layer)} & set(model.hook_dict)  # log A stands in without
        clean |= set(arch.cos_sin_hooks(layer) or ())
        grads.add(hooks.z(layer))
    writes = arch.residual_writes(drops)
    return Plan(tuple(sorted(both)), tuple(sorted(clean - both)), tuple(sorted(grads)), writes)


def _batch(
    model: Any,
    arch: Arch,
    run: BatchRun,
    cands: EdgeSet,
    groups: Sequence[TargetGroup],
    qk_layers: Sequence[int],
    drops: Sequence[int],
    weights: AttnWeights,
) -> tuple[Float[Tensor, "s v"], Float[Tensor, "s v"]]:
    """Σ over pairs of Î (plain) and of Σ_{l ∈ D_v} |Î_l| (GradDrop) for every edge."""
    info = arch.info
    delta = source_deltas(model, run.clean, run.noise, cands.sources, weights)
    layers = {
        layer: layer_attention(model, arch, layer, run.clean, run.noise, METHOD, tables=True)
        for layer in qk_layers
    }
    values = {layer: arch.value(run.clean[hooks.v(layer)]) for layer in qk_layers}
    changes = {
        id(g): _pattern_changes(model, arch, run, g, delta, layers[g.layer], weights)
        for g in groups
        if g.kind in ("q", "k")
    }

    b, t, n_src, d = delta.shape
    plain_groups = [g for g in groups if g.kind not in ("q", "k")]
    plain_cols = [c for g in plain_groups for c in g.cols]
    like = delta.new_empty(b, t, d)

    def effects(grads: dict[str, Tensor], cut: bool) -> Float[Tensor, "b s v"]:
        out = delta.new_zeros(b, n_src, len(cands.targets))
        for g in groups:
            if g.kind in ("q", "k"):
                gz = site_grad(grads, hooks.z(g.layer), cut)
                if gz is not None:
                    grad = pattern_grad(gz, values[g.layer])
                    out[:, :, g.cols] = _qk_effects(changes[id(g)], layers[g.layer], grad, g, arch)
        n = len(cands.targets)
        g_in = input_grads(model, plain_groups, grads, run.clean, weights, n, like)[plain_cols]
        out[:, :, plain_cols] = torch.einsum("btsd,vbtd->bsv", delta, g_in)
        return out

    plain = effects(run.grads(None), cut=False)
    below = torch.tensor(
        [info.n_layers if t.kind == "logits" else t.layer for t in cands.targets],
        device=plain.device, dtype=plain.dtype,
    )  # fmt: skip
    total = plain.abs() * below  # cutting a layer below v leaves Î unchanged
    for layer in drops:
        above = (below < layer).to(plain.dtype)  # targets this cut can reach (own layer: 0)
        total += effects(run.grads(layer), cut=True).abs() * above
    return plain.sum(0).double(), total.sum(0).double()


def _pattern_changes(
    model: Any,
    arch: Arch,
    run: BatchRun,
    group: TargetGroup,
    delta: Float[Tensor, "b t s d"],
    lay: LayerAttention,
    weights: AttnWeights,
) -> Float[Tensor, "u v b h t s"]:
    """A' − A for every candidate source u and target head v, with Δout_u pushed exactly
    through the target's norm, projection, clipping, QK-norm and rotary."""
    kind, layer = group.kind, group.layer
    x = run.clean[arch.norm_input_hook(kind, layer)]  # type: ignore[index]
    norm = arch.norm(model, kind, layer)
    b, t, n_src, d = delta.shape
    work = lay.s.dtype
    with torch.no_grad():
        shifted = (x.unsqueeze(2) + delta).permute(2, 0, 1, 3).reshape(n_src * b, t, d)
        dn = (normed(norm, shifted).view(n_src, b, t, d) - normed(norm, x).unsqueeze(0)).to(work)
        w = weights.w_in(kind, layer).to(work)  # [heads, d, e]
        if arch.qkv_clip is None and arch.qk_norm == "none":
            change = torch.einsum("ubtd,vde->ubtve", dn, w[group.heads])
        else:  # not linear: the whole projection moves, then clipping and the QK-norm
            p = run.clean[{"q": hooks.q, "k": hooks.k}[kind](layer)].to(work)  # [b, t, h, e]
            moved = p.unsqueeze(0) + torch.einsum("ubtd,hde->ubthe", dn, w)
            before = arch.pre_rotary(model, kind, layer, p, joint_done=False)
            after = arch.pre_rotary(model, kind, layer, moved, joint_done=False)
            change = (after - before.unsqueeze(0))[:, :, :, group.heads]
        change = arch.rotate(change, lay.cos, lay.sin)  # rotary is linear: rotate the change
        return _shifted(lay, group, change, arch)


def _shifted(lay: LayerAttention, group: TargetGroup, change: Tensor, arch: Arch) -> Tensor:
    """A' − A [u, v, b, h_v, t, s] where h_v are the query heads that read target v."""
    per_kv = arch.info.heads_per_kv
    raw = lay.raw
    outs = []
    for j, head in enumerate(group.heads):
        if group.kind == "q":
            kv = head // per_kv
            heads = slice(head, head + 1)
            ds = torch.einsum("ubte,bse->ubts", change[:, :, :, j], lay.k[:, :, kv]).unsqueeze(2)
        else:
            heads = slice(head * per_kv, (head + 1) * per_kv)
            ds = torch.einsum("bthe,ubse->ubhts", lay.q[:, :, heads], change[:, :, :, j])
        s = lay.s[:, heads]
        dl = moved_logits(None if raw is None else raw[:, heads], lay.scale * ds, lay.softcap)
        dl = dl.masked_fill(~torch.isfinite(s).unsqueeze(0), 0.0)
        outs.append((s.unsqueeze(0) + dl).softmax(-1) - lay.a[:, heads].unsqueeze(0))
    return torch.stack(outs, dim=1)


def _qk_effects(
    change: Tensor,
    lay: LayerAttention,
    grad: Float[Tensor, "b h t s"],
    group: TargetGroup,
    arch: Arch,
) -> Float[Tensor, "b u v"]:
    """Σ_ts (A' − A)(g − g_top) per pair, source and target (ΣΔA = 0 in each row)."""
    g = grad.to(lay.a.dtype)
    g = g - g.gather(-1, lay.top)
    per_kv = arch.info.heads_per_kv
    cols = []
    for j, head in enumerate(group.heads):
        heads = (
            slice(head, head + 1)
            if group.kind == "q"
            else slice(head * per_kv, (head + 1) * per_kv)
        )
        cols.append(torch.einsum("ubhts,bhts->bu", change[:, j], g[:, heads]))
    return torch.stack(cols, dim=-1)
