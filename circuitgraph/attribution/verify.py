"""Verification: exact activation patching of the top nodes of an estimate (DESIGN §1, step 2).

The estimate ranks; exact patching of its top K (or as many as a forward-pass budget
allows, at one pass per node plus the clean and source runs) says how far to trust it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.patching import patch_nodes
from circuitgraph.run import Mode, Progress
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, get_metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.text import plural

__all__ = ["Verification", "verify_nodes"]

#: top nodes verified when neither ``k`` nor ``budget`` is given
DEFAULT_K = 20


@dataclass(frozen=True)
class Verification:
    """Estimated vs. exact effects of the verified nodes, in the estimate's rank order.

    Example:
        >>> v = verify_nodes(model, pairs, scores, k=5)  # doctest: +SKIP
        >>> print(v.table())  # doctest: +SKIP
    """

    nodes: tuple[Node, ...]
    estimated: Float[Tensor, " k"]
    estimated_score: Float[Tensor, " k"]
    true: Float[Tensor, " k"]
    method: str
    metric: str
    n_pairs: int
    forward_passes: float

    @property
    def errors(self) -> Float[Tensor, " k"]:
        """Estimated signed effect minus the exact one."""
        return self.estimated - self.true

    @property
    def max_abs_error(self) -> float:
        return float(self.errors.abs().max()) if len(self.nodes) else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One row per node: estimate rank, signed estimate, exact effect, error, exact rank."""
        true_rank = {i: r for r, i in enumerate(self.true.abs().argsort(descending=True).tolist())}
        return [
            {
                "node": n.id,
                "rank": i + 1,
                "estimated": float(self.estimated[i]),
                "score": float(self.estimated_score[i]),
                "true": float(self.true[i]),
                "error": float(self.errors[i]),
                "true_rank": true_rank[i] + 1,
            }
            for i, n in enumerate(self.nodes)
        ]

    def table(self) -> str:
        head = f"{'rank':>4}  {'node':<16}{self.method + ' (signed)':>20}{'exact':>12}{'error':>12}"
        lines = [head]
        for r in self.rows():
            lines.append(
                f"{r['rank']:>4}  {r['node']:<16}{r['estimated']:>20.4g}{r['true']:>12.4g}"
                f"{r['error']:>12.4g}"
            )
        lines.append(
            f"exact patching of {plural(len(self.nodes), 'node')} on "
            f"{plural(self.n_pairs, 'pair')} ({self.metric}), "
            f"{plural(float(self.forward_passes), 'forward pass', 'forward passes')} per pair"
        )
        return "\n".join(lines)


def verify_nodes(
    model: Any,
    pairs: PromptPairs,
    estimate: NodeScores,
    k: int | None = None,
    budget: float | None = None,
    metric: str | Metric | None = None,
    mode: Mode = "noising",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Verification:
    """Exactly patch the estimate's top nodes and compare.

    Args:
        k: how many top nodes to verify.
        budget: forward passes per pair to spend (one per node plus two); the smaller of
            ``k`` and what the budget allows wins. With neither, the top 20.
        metric: defaults to the estimate's metric.

    Example:
        >>> v = verify_nodes(model, pairs, attribute_nodes(model, pairs), 50)  # doctest: +SKIP
        >>> v.max_abs_error  # doctest: +SKIP
    """
    n = _how_many(len(estimate), k, budget)
    top = estimate.top_k(n)
    metric = get_metric(metric if metric is not None else estimate.metric)
    truth = patch_nodes(
        model, pairs, top, metric, mode=mode, batch_size=batch_size, progress=progress
    )
    idx = torch.tensor([estimate.locate(node) for node in top], dtype=torch.long)
    return Verification(
        tuple(top), estimate.signed[idx].double(), estimate.score[idx].double(),
        truth.signed.double(), estimate.method, metric.name, len(pairs), truth.forward_passes,
    )  # fmt: skip


def _how_many(available: int, k: int | None, budget: float | None) -> int:
    limits = [available]
    if k is not None:
        if k < 1:
            raise ConfigError(f"expected k of at least 1 but got {k}")
        limits.append(k)
    if budget is not None:
        if budget < 3:
            raise ConfigError(
                f"expected a budget of at least 3 forward passes per pair (two runs plus one per "
                f"node) but got {budget}"
            )
        limits.append(int(budget) - 2)
    if k is None and budget is None:
        limits.append(DEFAULT_K)
    return min(limits)
