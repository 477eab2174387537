"""Exact patching as an estimator: the ground truth, behind the same contract as the others.

``exact`` is registered for nodes (one forward per node, :func:`~circuitgraph.patching.patch_nodes`)
and for edges (one forward per edge, :func:`~circuitgraph.patching.patch_edges`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from circuitgraph.attribution.candidates import EdgeSet
from circuitgraph.attribution.registry import register
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.patching import patch_edges, patch_nodes
from circuitgraph.run import RunOptions
from circuitgraph.scores import EdgeScores, NodeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["exact_edges", "exact_nodes"]


@register("exact")
def exact_nodes(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: Metric,
    opts: RunOptions,
    **options: Any,
) -> NodeScores:
    """Exact activation patching (one forward per node); options (``ablation``, ``max_rows``)
    go to :func:`~circuitgraph.patching.patch_nodes`.

    Example:
        >>> truth = exact_nodes(model, pairs, nodes, metric, RunOptions(), max_rows=256)  # doctest: +SKIP
    """
    unknown = sorted(set(options) - {"ablation", "max_rows"})
    if unknown:
        raise ConfigError(
            f"the exact method takes the options 'ablation' and 'max_rows' but got {unknown}"
        )
    return patch_nodes(
        model, pairs, nodes, metric, mode=opts.mode, batch_size=opts.batch_size,
        progress=opts.progress, **options,
    )  # fmt: skip


@register("exact", "edge")
def exact_edges(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    opts: RunOptions,
    **options: Any,
) -> EdgeScores:
    """Exact edge patching, one batched forward per edge: the ground truth.

    Example:
        >>> truth = exact_edges(model, pairs, EdgeSet.full(info), metric, RunOptions())  # doctest: +SKIP
    """
    unknown = sorted(set(options) - {"max_rows"})
    if unknown:
        raise ConfigError(f"the exact edge method takes the option 'max_rows' but got {unknown}")
    got = patch_edges(
        model, pairs, cands.edges(), metric, opts.mode, opts.batch_size,  # type: ignore[arg-type]
        options.get("max_rows"), opts.progress,
    )  # fmt: skip
    return _on_candidates(cands, got)


def _on_candidates(cands: EdgeSet, got: EdgeScores) -> EdgeScores:
    """Re-index ``got`` onto the candidates' sources × targets."""
    s_idx, t_idx = got.source_index, got.target_index
    rows = torch.tensor([s_idx.get(s, -1) for s in cands.sources])
    cols = torch.tensor([t_idx.get(t, -1) for t in cands.targets])
    signed = torch.zeros(len(rows), len(cols), dtype=got.signed.dtype)
    inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    signed[inside] = got.signed[rows.clamp(min=0)][:, cols.clamp(min=0)][inside]
    signed = signed * cands.valid
    return EdgeScores(
        cands.sources, cands.targets, signed, signed.abs(), cands.valid.clone(), got.method,
        got.metric, got.n_pairs, got.forward_passes, got.backward_passes, dict(got.meta),
    )  # fmt: skip
