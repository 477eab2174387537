"""Exact edge patching: a source's output read as one target's input only.

For an edge u → v the target's residual input is shifted by Δout_u = out_u(x_src) −
out_u(x_base) (through the target's own norm and projection), everything else runs as in
the base run. One batched forward per edge: the batch is repeated, one copy per edge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import Arch
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, Node
from circuitgraph.run import (
    Mode,
    Progress,
    RunContext,
    base_run,
    capture,
    keep,
    resolve,
    rows_per_pass,
    run_metric,
)
from circuitgraph.scores import EdgeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, shift_target, source_deltas

__all__ = ["check_edge", "patch_edges"]


def _edge_deltas(
    model: Any, batch: PromptPairs, sources: Sequence[Node], mode: Mode, weights: AttnWeights
) -> Float[Tensor, "b t s d"]:
    """Δout_u = out_u(x_src) − out_u(x_base) for each source (noising: corrupt − clean)."""
    arch = Arch.of(model)
    names = sorted({arch.source_hook(s) for s in sources})
    base, src = (batch.clean, batch.corrupt) if mode == "noising" else (batch.corrupt, batch.clean)
    return source_deltas(
        model, capture(model, base, names), capture(model, src, names), sources, weights
    )


def _edge_patch_hook(
    model: Any,
    weights: AttnWeights,
    members: list[tuple[int, Node, Tensor]],
    live: dict[str, Tensor],
    k: int,
) -> Callable[[Tensor, Any], Tensor]:
    """Forward hook at one target site: copy j's target input moves by its edge's Δout."""
    arch = Arch.of(model)

    def hook(act: Tensor, hook: Any) -> Tensor:
        out = act.clone().view(k, act.shape[0] // k, *act.shape[1:])
        for j, target, delta in members:
            site = arch.target_site(target)
            x = (
                None
                if site.residual is None
                else live[site.residual].view(k, -1, *live[site.residual].shape[1:])[j : j + 1]
            )
            change = shift_target(model, weights, target, x, delta.unsqueeze(0))[0].to(act.dtype)
            if site.index is None:
                out[j] += change
            else:
                site.view(out[j])[:, :, site.index] += change
        return out.view_as(act)

    return hook


def patch_edges(
    model: Any,
    pairs: PromptPairs,
    edges: Sequence[Edge],
    metric: str | Metric = "logit_diff",
    mode: Mode = "noising",
    batch_size: int = 32,
    max_rows: int | None = None,
    progress: Progress | None = None,
    scale: float = 1.0,
) -> EdgeScores:
    """Exact edge patching: for each edge u → v, v's input shifted by Δout_u, all else clean.

    One (batched) forward per edge: the batch is repeated, one copy per edge. Returns
    :class:`~circuitgraph.scores.EdgeScores` over the edges' sources and targets.
    ``scale`` s shifts by s·Δout_u instead: effects at a vanishing s, divided by s, are
    what edge attribution patching (EAP) estimates.

    Example:
        >>> exact = patch_edges(model, pairs, [Edge.parse("a0.h1->a1.h0<k>")])  # doctest: +SKIP
    """
    edges = list(dict.fromkeys(edges))
    if not edges:
        raise ConfigError("expected at least one edge to patch but got none")
    arch = Arch.of(model)
    for e in edges:
        check_edge(e, arch)
    sources = sorted({e.src for e in edges}, key=lambda n: n.sort_key)
    targets = sorted({e.dst for e in edges}, key=lambda n: n.sort_key)
    s_idx = {n: i for i, n in enumerate(sources)}
    pairs, metric, opts = resolve(model, pairs, metric, batch_size, mode, progress)
    weights = attn_weights(model)
    total = torch.zeros(len(edges), dtype=torch.float64)
    for batch in opts.batches(pairs):
        ctx = base_run(model, batch, metric, opts.mode)
        deltas = scale * _edge_deltas(model, batch, sources, opts.mode, weights)
        k = max(1, rows_per_pass(model, batch, max_rows) // len(batch))
        for start in range(0, len(edges), k):
            chunk = edges[start : start + k]
            fx = _edge_effects(model, ctx, chunk, deltas, s_idx, weights)
            total[start : start + len(chunk)] += fx.sum(1).cpu()
            opts.advance(len(chunk) * len(batch))
    signed = opts.reduce(total) / len(pairs)
    return _edge_scores(sources, targets, edges, signed, metric.name, len(pairs))


def _edge_effects(
    model: Any,
    ctx: RunContext,
    chunk: Sequence[Edge],
    deltas: Tensor,
    s_idx: dict[Node, int],
    weights: AttnWeights,
) -> Float[Tensor, "k b"]:
    k, b = len(chunk), len(ctx.batch)
    arch = Arch.of(model)
    groups: dict[str, list[tuple[int, Node, Tensor]]] = defaultdict(list)
    for j, e in enumerate(chunk):
        groups[arch.target_site(e.dst).name].append((j, e.dst, deltas[:, :, s_idx[e.src]]))
    live: dict[str, Tensor] = {}
    residuals = {r for e in chunk if (r := arch.target_site(e.dst).residual)}
    fwd: list[tuple[str, Callable[..., Any]]] = [
        (r, keep(live, r, detach=False)) for r in sorted(residuals)
    ]
    fwd += [(n, _edge_patch_hook(model, weights, m, live, k)) for n, m in groups.items()]
    with torch.no_grad():
        values, _ = run_metric(
            model, ctx.base_tokens.repeat(k, 1), ctx.batch, ctx.metric, ctx.reference, fwd
        )
    return values.view(k, b).double() - ctx.base_metric.view(1, b).double()


def check_edge(e: Edge, arch: Arch) -> None:
    """Refuse an edge whose source writes after its target reads (or a non-edge)."""
    arch.source_hook(e.src)
    arch.target_site(e.dst)
    if not arch.can_feed(e.src, e.dst):
        block = " (attention and MLP of a layer run in parallel here)" if arch.parallel else ""
        raise ConfigError(
            f"edge {e.id} does not exist: {e.src.id} writes to the residual stream after "
            f"{e.dst.id} reads it{block}"
        )


def _edge_scores(
    sources: Sequence[Node],
    targets: Sequence[Node],
    edges: Sequence[Edge],
    signed: Tensor,
    metric: str,
    n_pairs: int,
) -> EdgeScores:
    s_idx = {n: i for i, n in enumerate(sources)}
    t_idx = {n: i for i, n in enumerate(targets)}
    grid = torch.zeros(len(sources), len(targets), dtype=torch.float64)
    valid = torch.zeros_like(grid, dtype=torch.bool)
    for e, value in zip(edges, signed.tolist(), strict=True):
        grid[s_idx[e.src], t_idx[e.dst]] = value
        valid[s_idx[e.src], t_idx[e.dst]] = True
    return EdgeScores(
        tuple(sources), tuple(targets), grid, grid.abs(), valid, "exact", metric, n_pairs,
        forward_passes=float(len(edges)) + 2.0,
    )  # fmt: skip
