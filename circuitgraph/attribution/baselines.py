"""Baselines for the benchmark (DESIGN §2): subsampling, blocks and random order.

Each has the shared estimator signature and returns :class:`NodeScores` with honest pass
counts (forward passes per prompt pair, including each round's clean and source runs).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from circuitgraph.attribution.diagnostics import draw_subsets, subset_effects
from circuitgraph.attribution.registry import register
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.patching import patch_sets
from circuitgraph.run import RunOptions
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, get_metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["blocks", "random_order", "subsampling"]


@register("subsampling")
def subsampling(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: Metric,
    opts: RunOptions,
    *,
    p: float = 0.25,
    n_subsets: int = 200,
    seed: int = 0,
) -> NodeScores:
    """The diagnostic estimator as a ranking: ê(n) = mean I(S ∋ n) − mean I(S ∌ n).

    Example:
        >>> s = subsampling(model, pairs, nodes, metric, RunOptions(), n_subsets=100)  # doctest: +SKIP
    """
    nodes = list(nodes)
    if not nodes or n_subsets < 2 or not 0.0 < p < 1.0:
        raise ConfigError(
            f"subsampling needs nodes, 0 < p < 1 and n_subsets ≥ 2 but got {len(nodes)} nodes, "
            f"p={p}, n_subsets={n_subsets}"
        )
    masks = draw_subsets(len(nodes), p, n_subsets, seed)
    sets = [[nodes[j] for j in row.nonzero().flatten().tolist()] for row in masks]
    effects = _patch(model, pairs, sets, metric, opts)
    est, _, _ = subset_effects(masks, effects)
    passes = n_subsets + _overhead(metric)
    meta = {
        "p": p,
        "n_subsets": n_subsets,
        "seed": seed,
        "ranked_by": "|mean I(S∋n) − mean I(S∌n)|",
    }
    return _scores(nodes, est, est.abs(), "subsampling", metric, pairs, passes, opts.mode, meta)


@register("blocks")
def blocks(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: Metric,
    opts: RunOptions,
    *,
    block_size: int | None = None,
    budget: float | None = None,
    fanout: int = 16,
) -> NodeScores:
    """Patch contiguous blocks (topological order); split the largest-effect blocks in halves.

    Each round splits the ``fanout`` blocks of largest |effect| until ``budget`` forward
    passes per pair (default: one per node) are spent or every block is a single node. A
    node's signed score is its smallest measured block's effect divided by that block's
    size (its own exact effect once its block is a single node).

    Example:
        >>> s = blocks(model, pairs, nodes, metric, RunOptions(), block_size=8, budget=64)  # doctest: +SKIP
    """
    given = list(nodes)
    if not given:
        raise ConfigError("expected at least one node to score but got none")
    order = sorted(range(len(given)), key=lambda i: given[i].sort_key)
    nodes = [given[i] for i in order]
    size = block_size or max(1, math.ceil(math.sqrt(len(nodes))))
    budget = float(len(nodes)) if budget is None else budget
    overhead = _overhead(metric)
    parts = [tuple(range(i, min(i + size, len(nodes)))) for i in range(0, len(nodes), size)]
    effects = _patch(model, pairs, [[nodes[i] for i in b] for b in parts], metric, opts)
    spent = len(parts) + overhead
    heap = [(-abs(float(e)), b, float(e)) for b, e in zip(parts, effects.tolist(), strict=True)]
    heapq.heapify(heap)
    while True:
        split = _pop_splittable(heap, fanout)
        children = [half for b, _ in split for half in (b[: len(b) // 2], b[len(b) // 2 :])]
        if not children or spent + len(children) + overhead > budget:
            heap.extend((-abs(e), b, e) for b, e in split)
            break
        found = _patch(model, pairs, [[nodes[i] for i in b] for b in children], metric, opts)
        spent += len(children) + overhead
        for b, e in zip(children, found.tolist(), strict=True):
            heapq.heappush(heap, (-abs(e), b, e))
    signed = torch.zeros(len(nodes), dtype=torch.float64)
    for _, b, e in heap:
        signed[[order[i] for i in b]] = e / len(b)
    return _scores(given, signed, signed.abs(), "blocks", metric, pairs, spent, opts.mode,
                   {"block_size": size, "budget": budget, "final_blocks": len(heap),
                    "ranked_by": "|E I(block)| / block size"})  # fmt: skip


def _pop_splittable(
    heap: list[tuple[float, tuple[int, ...], float]], k: int
) -> list[tuple[tuple[int, ...], float]]:
    """The (up to) k largest-|effect| blocks of more than one node, taken off the heap."""
    out: list[tuple[tuple[int, ...], float]] = []
    singles: list[tuple[float, tuple[int, ...], float]] = []
    while heap and len(out) < k:
        item = heapq.heappop(heap)
        (out.append((item[1], item[2])) if len(item[1]) > 1 else singles.append(item))
    for item in singles:
        heapq.heappush(heap, item)
    return out


@register("random")
def random_order(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: Metric,
    opts: RunOptions,
    *,
    seed: int = 0,
) -> NodeScores:
    """Random order: scores are seeded uniform noise, signed scores 0 (no model runs).

    Example:
        >>> random_order(None, pairs, nodes, metric, RunOptions(), seed=3).method  # doctest: +SKIP
        'random'
    """
    nodes = list(nodes)
    g = torch.Generator().manual_seed(seed)
    score = torch.rand(len(nodes), generator=g, dtype=torch.float64)
    return _scores(nodes, torch.zeros_like(score), score, "random", metric, pairs, 0.0, opts.mode,
                   {"seed": seed, "ranked_by": "random order (scores are not effects)"})  # fmt: skip


def _patch(
    model: Any, pairs: PromptPairs, sets: list[list[Node]], metric: Metric, opts: RunOptions
) -> Tensor:
    return patch_sets(
        model, pairs, sets, metric, opts.mode, batch_size=opts.batch_size, progress=opts.progress
    )


def _scores(
    nodes: Sequence[Node],
    signed: Tensor,
    score: Tensor,
    method: str,
    metric: str | Metric,
    pairs: PromptPairs,
    passes: float,
    mode: str,
    meta: dict[str, Any],
) -> NodeScores:
    return NodeScores(
        tuple(nodes), signed, score, method, get_metric(metric).name, len(pairs),
        forward_passes=passes, meta={"mode": mode, **meta},
    )  # fmt: skip


def _overhead(metric: str | Metric) -> float:
    """Forward passes per pair that every patching round adds: the base and source runs
    (and the clean reference run for metrics that compare with it)."""
    return 2.0 + float(get_metric(metric).needs_reference)
