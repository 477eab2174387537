"""Dense score containers with index maps: :class:`NodeScores` (and edge scores later).

Scores always come signed (``signed`` = E I or E Î) and absolute (``score``, what the
method ranks by; for plain estimates ``|E Î|``, for GradDrop ``E (1/(L-1)) Σ_l |Î_l|``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node

__all__ = ["NodeScores"]


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

    nodes: tuple[Node, ...]
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

    @property
    def index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    def __getitem__(self, node: Node | str) -> tuple[float, float]:
        """(signed, absolute) score of one node."""
        key = Node.parse(node) if isinstance(node, str) else node
        try:
            i = self.index[key]
        except KeyError:
            raise ConfigError(f"node {key.id} has no score in this result") from None
        return float(self.signed[i]), float(self.score[i])

    def ranking(self) -> list[Node]:
        """All nodes, highest absolute score first (ties by topological order)."""
        order = sorted(range(len(self)), key=lambda i: (-float(self.score[i]), i))
        return [self.nodes[i] for i in order]

    def top_k(self, k: int) -> list[Node]:
        return self.ranking()[: max(k, 0)]

    def threshold(self, t: float) -> list[Node]:
        return [n for n in self.ranking() if self[n][1] >= t]

    def subset(self, nodes: Sequence[Node]) -> NodeScores:
        idx = torch.tensor([self.index[n] for n in nodes], dtype=torch.long)
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
    def from_json(cls, data: dict[str, Any]) -> NodeScores:
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
