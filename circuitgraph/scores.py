"""Dense score containers with index maps: :class:`NodeScores` (and edge scores later).

Scores always come signed (``signed`` = E I or E Î) and absolute (``score``, what the
method ranks by; for plain estimates ``|E Î|``, for GradDrop ``E (1/(L-1)) Σ_l |Î_l|``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import networkx as nx
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitgraph.errors import ConfigError, DataError, malformed
from circuitgraph.nodes import Edge, Node, NodeArray

__all__ = ["EdgeScores", "NodeScores"]


@dataclass(frozen=True)
class NodeScores:
    """Per-node scores of one method.

    ``forward_passes`` / ``backward_passes`` count passes per prompt pair (the cost in
    forward-pass equivalents does not depend on how many pairs were used).

    Example:
        >>> import torch
        >>> s = NodeScores((Node("head", 0, 0), Node("mlp", 0)), torch.tensor([-2.0, 1.0]),
        ...                torch.tensor([2.0, 1.0]), "exact", "logit_diff", 8)
        >>> [n.id for n in s.top_k(1)]
        ['a0.h0']
    """

    nodes: Sequence[Node]  # a tuple, or a NodeArray (no Python object per node)
    signed: Float[Tensor, " n"]
    score: Float[Tensor, " n"]
    method: str
    metric: str
    n_pairs: int
    forward_passes: float = 0.0
    backward_passes: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.nodes) == self.signed.numel() == self.score.numel()):
            raise ConfigError(
                f"expected one signed and one absolute score per node ({len(self.nodes)}) but got "
                f"{self.signed.numel()} and {self.score.numel()}"
            )

    def __len__(self) -> int:
        return len(self.nodes)

    @cached_property
    def index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    def locate(self, node: Node | str) -> int:
        """The position of a node in ``nodes`` (a one-sentence error when it has no score)."""
        key = Node.parse(node) if isinstance(node, str) else node
        try:
            if isinstance(self.nodes, NodeArray):  # no per-node dictionary at neuron scale
                return self.nodes.locate(key)
            return self.index[key]
        except KeyError:
            raise ConfigError(f"node {key.id} has no score in this result") from None

    def __getitem__(self, node: Node | str) -> tuple[float, float]:
        """(signed, absolute) score of one node."""
        i = self.locate(node)
        return float(self.signed[i]), float(self.score[i])

    def order(self) -> Tensor:
        """Positions of the nodes, highest absolute score first (ties keep the given order)."""
        return torch.sort(-self.score.double(), stable=True).indices

    def ranking(self) -> list[Node]:
        """All nodes, highest absolute score first (ties keep the given order)."""
        return [self.nodes[i] for i in self.order().tolist()]

    def top_k(self, k: int) -> list[Node]:
        return [self.nodes[i] for i in self.order()[: max(k, 0)].tolist()]

    def threshold(self, t: float) -> list[Node]:
        return self.top_k(int((self.score >= t).sum()))

    def subset(self, nodes: Sequence[Node]) -> NodeScores:
        idx = torch.tensor([self.locate(n) for n in nodes], dtype=torch.long)
        return NodeScores(
            tuple(nodes), self.signed[idx], self.score[idx], self.method, self.metric,
            self.n_pairs, self.forward_passes, self.backward_passes, dict(self.meta),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "circuitgraph.node_scores/1",
            "method": self.method,
            "metric": self.metric,
            "n_pairs": self.n_pairs,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "meta": self.meta,
            "nodes": [
                {"id": n.id, "signed": float(s), "score": float(a)}
                for n, s, a in zip(
                    self.nodes, self.signed.tolist(), self.score.tolist(), strict=True
                )
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "the document") -> NodeScores:
        """Read :meth:`to_json` back; a document of the wrong shape is a one-sentence
        :class:`~circuitgraph.errors.DataError` naming ``where``."""
        _check_schema(data, "circuitgraph.node_scores/1", "node scores (nodes.json)")
        with malformed("node scores document (nodes.json)", where):
            return cls._from_json(data)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> NodeScores:
        rows = data["nodes"]
        return cls(
            nodes=tuple(Node.parse(r["id"]) for r in rows),
            signed=torch.tensor([r["signed"] for r in rows], dtype=torch.float64),
            score=torch.tensor([r["score"] for r in rows], dtype=torch.float64),
            method=data["method"],
            metric=data["metric"],
            n_pairs=int(data["n_pairs"]),
            forward_passes=float(data.get("forward_passes", 0.0)),
            backward_passes=float(data.get("backward_passes", 0.0)),
            meta=dict(data.get("meta", {})),
        )

    def to_networkx(self) -> nx.DiGraph:
        """The nodes as a graph without edges, scores as node attributes."""
        g = nx.DiGraph(method=self.method, metric=self.metric, n_pairs=self.n_pairs)
        for n, s, a in zip(self.nodes, self.signed.tolist(), self.score.tolist(), strict=True):
            g.add_node(n.id, kind=n.kind, layer=n.layer, signed=s, score=a)
        return g


@dataclass(frozen=True)
class EdgeScores:
    """Per-edge scores of one method, dense over [sources × targets] with index maps.

    ``valid[i, j]`` says whether source i can reach target j directly (it writes to the
    residual stream before the target reads it); invalid cells hold zeros and are never
    ranked.

    Example:
        >>> import torch
        >>> src, dst = (Node("input"),), (Node("q", 0, 0), Node("logits"))
        >>> e = EdgeScores(src, dst, torch.tensor([[0.5, -2.0]]), torch.tensor([[0.5, 2.0]]),
        ...                torch.ones(1, 2, dtype=torch.bool), "exact", "logit_diff", 4)
        >>> [x.id for x in e.top_k(1)]
        ['input->logits']
    """

    sources: tuple[Node, ...]
    targets: tuple[Node, ...]
    signed: Float[Tensor, "s t"]
    score: Float[Tensor, "s t"]
    valid: Bool[Tensor, "s t"]
    method: str
    metric: str
    n_pairs: int
    forward_passes: float = 0.0
    backward_passes: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.sources), len(self.targets))
        for name in ("signed", "score", "valid"):
            if tuple(getattr(self, name).shape) != shape:
                raise ConfigError(
                    f"expected {name} of shape {shape} (sources × targets) but got "
                    f"{tuple(getattr(self, name).shape)}"
                )

    @cached_property
    def source_index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.sources)}

    @cached_property
    def target_index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.targets)}

    def edges(self) -> list[Edge]:
        """Every valid edge, in source-major order."""
        return [Edge(self.sources[i], self.targets[j]) for i, j in self.valid.nonzero().tolist()]

    def __len__(self) -> int:
        return int(self.valid.sum())

    def __getitem__(self, edge: Edge | str) -> tuple[float, float]:
        """(signed, absolute) score of one edge."""
        e = Edge.parse(edge) if isinstance(edge, str) else edge
        i, j = self.source_index.get(e.src), self.target_index.get(e.dst)
        if i is None or j is None or not bool(self.valid[i, j]):
            raise ConfigError(f"edge {e.id} has no score in this result")
        return float(self.signed[i, j]), float(self.score[i, j])

    def ranking(self) -> list[Edge]:
        """Valid edges, highest absolute score first (ties in source-major order)."""
        cells = self.valid.nonzero()
        values = self.score[cells[:, 0], cells[:, 1]].double()
        order = torch.sort(-values, stable=True).indices
        return [Edge(self.sources[i], self.targets[j]) for i, j in cells[order].tolist()]

    def top_k(self, k: int) -> list[Edge]:
        return self.ranking()[: max(k, 0)]

    def threshold(self, t: float) -> list[Edge]:
        return self.ranking()[: int(((self.score >= t) & self.valid).sum())]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "circuitgraph.edge_scores/1",
            "method": self.method,
            "metric": self.metric,
            "n_pairs": self.n_pairs,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "meta": self.meta,
            "sources": [n.id for n in self.sources],
            "targets": [n.id for n in self.targets],
            "edges": [
                {"id": e.id, "signed": s, "score": a} for e in self.edges() for s, a in [self[e]]
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "the document") -> EdgeScores:
        """Read :meth:`to_json` back; a document of the wrong shape is a one-sentence
        :class:`~circuitgraph.errors.DataError` naming ``where``."""
        _check_schema(data, "circuitgraph.edge_scores/1", "edge scores (edges.json)")
        with malformed("edge scores document (edges.json)", where):
            return cls._from_json(data)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> EdgeScores:
        sources = tuple(Node.parse(s) for s in data["sources"])
        targets = tuple(Node.parse(t) for t in data["targets"])
        si = {n: i for i, n in enumerate(sources)}
        ti = {n: j for j, n in enumerate(targets)}
        signed = torch.zeros(len(sources), len(targets), dtype=torch.float64)
        score = torch.zeros_like(signed)
        valid = torch.zeros_like(signed, dtype=torch.bool)
        for row in data["edges"]:
            e = Edge.parse(row["id"])
            i, j = si[e.src], ti[e.dst]
            signed[i, j], score[i, j], valid[i, j] = row["signed"], row["score"], True
        return cls(
            sources, targets, signed, score, valid, data["method"], data["metric"],
            int(data["n_pairs"]), float(data.get("forward_passes", 0.0)),
            float(data.get("backward_passes", 0.0)), dict(data.get("meta", {})),
        )  # fmt: skip

    def to_networkx(self) -> nx.DiGraph:
        """Every valid edge with its scores as attributes (no pruning)."""
        g = nx.DiGraph(method=self.method, metric=self.metric, n_pairs=self.n_pairs)
        for n in (*self.sources, *self.targets):
            g.add_node(n.id, kind=n.kind, layer=n.layer)
        for e in self.edges():
            signed, score = self[e]
            g.add_edge(e.src.id, e.dst.id, signed=signed, score=score)
        return g


def _check_schema(data: Any, schema: str, what: str) -> None:
    got = data.get("schema") if isinstance(data, dict) else type(data).__name__
    if got != schema:
        raise DataError(
            f"expected {what} with schema {schema!r} but got {got!r}; pass a file that "
            "circuitgraph wrote"
        )
