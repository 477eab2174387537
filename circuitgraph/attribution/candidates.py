"""Candidate edges: sources × targets of a model, or among the nodes screening kept.

An edge u → v exists when u writes to the residual stream before v reads it
(:func:`~circuitgraph.nodes.can_feed`); a candidate set is dense, with ``valid`` marking
the edges that exist, so estimators score every candidate with one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.model import ModelInfo
from circuitgraph.nodes import Edge, Node, can_feed, edge_sources, edge_targets
from circuitgraph.scores import NodeScores

__all__ = ["EdgeSet", "edge_candidates"]


@dataclass(frozen=True)
class EdgeSet:
    """Candidate edges: sources × targets, with ``valid`` marking the edges that exist.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> info = ModelInfo("m", 1, 1, 1, 8, 4, 16, "LN", False, False, False, 10, 8)
        >>> len(EdgeSet.full(info).edges())
        8
    """

    sources: tuple[Node, ...]
    targets: tuple[Node, ...]
    valid: Bool[Tensor, "s t"]

    @classmethod
    def full(cls, info: ModelInfo) -> EdgeSet:
        """Every edge of the model (parallel blocks: no head feeds its own layer's MLP)."""
        return cls.between(edge_sources(info), edge_targets(info), info.parallel_blocks)

    @classmethod
    def between(
        cls, sources: Sequence[Node], targets: Sequence[Node], parallel: bool = False
    ) -> EdgeSet:
        """Every edge from ``sources`` to ``targets`` (``parallel``: of a model with
        parallel attention and MLP blocks)."""
        valid = torch.tensor(
            [[can_feed(s, t, parallel) for t in targets] for s in sources], dtype=torch.bool
        )
        return cls(tuple(sources), tuple(targets), valid.reshape(len(sources), len(targets)))

    def edges(self) -> list[Edge]:
        return [Edge(self.sources[i], self.targets[j]) for i, j in self.valid.nonzero().tolist()]


def edge_candidates(
    info: ModelInfo, node_scores: NodeScores | None = None, keep: int | None = None
) -> EdgeSet:
    """Edges among the nodes kept by screening (all edges when no scores are given).

    The top ``keep`` nodes by ``node_scores`` are kept. A kept head (``a3.h5``) is a source
    and its q/k/v inputs are targets; a kept q/k/v input is a target and makes its head a
    source too (a grouped ``a3.kv1<k>`` every head of its group), since what enters a head's
    input reaches the logits only through that head's output; a kept MLP is both. ``input`` and ``logits``
    are always kept.

    Example:
        >>> cands = edge_candidates(info, atp_star_scores, keep=20)  # doctest: +SKIP
    """
    full_s, full_t = edge_sources(info), edge_targets(info)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ConfigError(f"expected keep to be a whole number >= 1 (nodes kept) but got {keep!r}")
    if node_scores is None:
        return EdgeSet.between(full_s, full_t, info.parallel_blocks)
    kept = node_scores.top_k(keep) if keep is not None else list(node_scores.nodes)
    if any(n.position is not None for n in kept):
        raise ConfigError(
            "edge candidates need whole-node scores, but got per-position nodes; screen "
            "with per_position=False before attributing edges"
        )
    heads: set[tuple[int, int | None]] = {(n.layer, n.index) for n in kept if n.kind == "head"}
    fed = {(n.layer, h) for n in kept for h in _heads_of(n, info)}  # heads whose input is kept
    mlps = {n.layer for n in kept if n.kind == "mlp"}
    qkv = {n for n in kept if n.kind in ("q", "k", "v")}
    sources = [s for s in full_s if s.kind == "input" or _kept_source(s, heads | fed, mlps)]
    targets = [t for t in full_t if t.kind == "logits" or _kept_target(t, heads, mlps, qkv, info)]
    return EdgeSet.between(sources, targets, info.parallel_blocks)


def _heads_of(n: Node, info: ModelInfo) -> range:
    """The query heads whose output a kept node is or feeds (none for other kinds)."""
    if n.kind not in ("head", "q", "k", "v") or n.index is None:
        return range(0)
    if n.kind != "head" and n.grouped:
        r = info.heads_per_kv or 1
        return range(n.index * r, (n.index + 1) * r)
    return range(n.index, n.index + 1)


def _kept_source(s: Node, heads: set[tuple[int, int | None]], mlps: set[int]) -> bool:
    return (s.layer, s.index) in heads if s.kind == "head" else s.layer in mlps


def _kept_target(
    t: Node, heads: set[tuple[int, int | None]], mlps: set[int], qkv: set[Node], info: ModelInfo
) -> bool:
    if t.kind == "mlp":
        return t.layer in mlps
    if t in qkv:
        return True
    if t.kind == "q" or not t.grouped:
        return (t.layer, t.index) in heads
    # a grouped key/value head feeds the query heads of its group
    group = range(t.index * info.heads_per_kv, (t.index + 1) * info.heads_per_kv)  # type: ignore[operator]
    return any((t.layer, h) in heads for h in group)
