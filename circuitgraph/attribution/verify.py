"""Verification: exact activation patching of the top nodes of an estimate (DESIGN §1, step 2).

The estimate ranks; exact patching of its top K (or as many as a forward-pass budget
allows, at one pass per node plus the clean and source runs) says how far to trust it.

``k="auto"`` (:func:`verify_auto`) verifies until the random-subset diagnostic says, at the
stated confidence, that no unverified node can reach the smallest effect asked for (the k-th
largest exact effect verified, or ``min_effect``): the cost of verified recall (AtP*, §4)
turned into a stopping rule. It reports the forward passes spent against the exhaustive
sweep (one per node plus the base and source runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.attribution.diagnostics import Diagnosis
from circuitgraph.attribution.sequential import (
    Schedule,
    diagnosis_of,
    group_keys,
    node_evaluator,
    overhead_passes,
    run_rounds,
)
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.patching import patch_nodes
from circuitgraph.run import Mode, Progress
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, get_metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.text import plural

__all__ = ["Verification", "verify_auto", "verify_nodes"]

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
    #: ``k="auto"`` only: the bound on the unverified nodes, the threshold τ it was held to,
    #: the cost of the exhaustive sweep, each node's rank in the estimate, why it stopped
    diagnosis: Diagnosis | None = None
    threshold: float | None = None
    exhaustive_passes: float | None = None
    screen_rank: tuple[int, ...] | None = None
    stopped: str = ""
    asked: str = ""

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
        ranks = self.screen_rank or tuple(range(1, len(self.nodes) + 1))
        return [
            {
                "node": n.id,
                "rank": ranks[i],
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
        if self.exhaustive_passes is not None:
            lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        """One paragraph: what was verified, at what cost against the sweep, and what it proves."""
        how = self.asked or f"top {len(self.nodes)}"
        if self.exhaustive_passes is not None:  # k="auto": the rule, not a count
            how = f"auto, to hold the {how}" if how.startswith("top ") else f"auto, {how}"
        text = (
            f"Verified {plural(len(self.nodes), 'node')} exactly ({how}) "
            f"for {self.forward_passes:g} forward passes per pair"
        )
        if self.exhaustive_passes:
            ratio = self.exhaustive_passes / max(self.forward_passes, 1e-9)
            text += f" (the exhaustive sweep costs {self.exhaustive_passes:g}: {ratio:.2f}x)"
        d = self.diagnosis
        if self.stopped == "exhausted":
            return text + "; every node was verified, nothing is left to bound."
        if d is None or self.threshold is None:
            return text + "."
        held = "held" if self.stopped == "bounded" else f"not reached (stopped: {self.stopped})"
        return (
            f"{text}; the stopping rule {held}: with {d.confidence:.0%} confidence no unverified "
            f"node ({len(d.nodes)}) has |effect| above {d.bound:.4g} (threshold {self.threshold:.4g}). "
            f"{d.caveat}"
        )

    def to_json(self) -> dict[str, Any]:
        """The verified nodes (exact vs estimated), the cost, and the bound on the rest."""
        return {
            "schema": "circuitgraph.verification/1",
            "method": self.method,
            "metric": self.metric,
            "n_pairs": self.n_pairs,
            "asked": self.asked,
            "forward_passes": self.forward_passes,
            "exhaustive_passes": self.exhaustive_passes,
            "threshold": self.threshold,
            "stopped": self.stopped,
            "verified": self.rows(),
            "diagnosis": None if self.diagnosis is None else self.diagnosis.to_json(),
        }


def verify_nodes(
    model: Any,
    pairs: PromptPairs,
    estimate: NodeScores,
    k: int | Literal["auto"] | None = None,
    budget: float | None = None,
    metric: str | Metric | None = None,
    mode: Mode = "noising",
    batch_size: int = 32,
    progress: Progress | None = None,
    *,
    top_k: int | None = None,
    min_effect: float | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> Verification:
    """Exactly patch the estimate's top nodes and compare.

    Args:
        k: how many top nodes to verify, or ``"auto"``: verify until no unverified node can
            reach the ``top_k``-th largest exact effect (or ``min_effect``) at ``confidence``
            (see :func:`verify_auto`; ``top_k``, ``min_effect``, ``confidence`` and ``seed``
            are its options).
        budget: forward passes per pair to spend (one per node plus two); the smaller of
            ``k`` and what the budget allows wins. With neither, the top 20.
        metric: defaults to the estimate's metric.

    Example:
        >>> v = verify_nodes(model, pairs, attribute_nodes(model, pairs), 50)  # doctest: +SKIP
        >>> v.max_abs_error  # doctest: +SKIP
        >>> verify_nodes(model, pairs, scores, "auto", top_k=10).summary()  # doctest: +SKIP
    """
    if k == "auto":
        return verify_auto(
            model, pairs, estimate, top_k=top_k, min_effect=min_effect, budget=budget,
            metric=metric, mode=mode, batch_size=batch_size, progress=progress,
            confidence=confidence, seed=seed,
        )  # fmt: skip
    if isinstance(k, str):
        raise ConfigError(f"expected k to be a number of nodes or 'auto' but got {k!r}")
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


def verify_auto(
    model: Any,
    pairs: PromptPairs,
    estimate: NodeScores,
    *,
    top_k: int | None = None,
    min_effect: float | None = None,
    confidence: float = 0.95,
    budget: float | None = None,
    groups: str | Callable[[Node], str] = "layer",
    p: float = 0.25,
    first_subsets: int = 32,
    correction: str = "paper",
    gap: float | None = None,
    seed: int = 0,
    metric: str | Metric | None = None,
    mode: Mode = "noising",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Verification:
    """Verify in the estimate's order, then where the diagnostic points, until no unverified
    node can reach τ at ``confidence`` (for additive effects), or the budget runs out.

    τ is the ``top_k``-th largest exact effect verified so far (so that the verified nodes
    hold the true top ``top_k``), or ``min_effect`` (every node at least that large is
    verified), or the smaller of the two when both are given; with neither, ``top_k=10``.
    The first round verifies the estimate's top ``top_k`` (or every node it puts at or above
    ``min_effect``); each round after it verifies the nodes the diagnostic cannot rule out
    and that look large (see :func:`~circuitgraph.attribution.sequential.run_rounds`).
    ``budget`` is in forward passes per pair, the screen not included; by default the
    exhaustive sweep's (nodes + 2), which the rounds never exceed: a round that would cost
    more than verifying every remaining node verifies them all instead.

    Example:
        >>> v = verify_auto(model, pairs, attribute_nodes(model, pairs), top_k=5)  # doctest: +SKIP
        >>> print(v.summary())  # doctest: +SKIP
    """
    nodes = list(estimate.nodes)
    if not nodes:
        raise ConfigError("expected an estimate with at least one node but got none")
    m = get_metric(metric if metric is not None else estimate.metric)
    k, threshold, asked = _stopping_rule(top_k, min_effect)
    order = estimate.order().tolist()
    signed = estimate.signed.double().cpu()
    first = order[:k] if k else []
    if min_effect is not None:
        size = torch.maximum(signed.abs(), estimate.score.double().cpu())
        first = list(dict.fromkeys(first + [i for i in order if float(size[i]) >= min_effect]))
    over = overhead_passes(m)
    exhaustive = len(nodes) + over
    out = run_rounds(
        node_evaluator(model, pairs, nodes, m, mode, batch_size, progress), len(nodes),
        screen=signed, group_of=group_keys(nodes, groups), first=first, threshold=threshold,
        verify=True, budget=exhaustive if budget is None else budget, overhead=over,
        schedule=Schedule(confidence, p, first_subsets, correction=correction, seed=seed),
    )  # fmt: skip
    done = [i for i, _ in out.verified]
    idx = torch.tensor(done, dtype=torch.long)
    rank = {i: r + 1 for r, i in enumerate(order)}
    diag = diagnosis_of(out, nodes, m, pairs, gap, out.threshold, 0.0, budget, p, seed,
                      confidence, correction)  # fmt: skip
    return Verification(
        tuple(nodes[i] for i in done), estimate.signed[idx].double(),
        estimate.score[idx].double(), torch.tensor([v for _, v in out.verified], dtype=torch.float64),
        estimate.method, m.name, len(pairs), out.passes, diagnosis=diag, threshold=out.threshold,
        exhaustive_passes=exhaustive, screen_rank=tuple(rank[i] for i in done),
        stopped=out.stopped, asked=asked,
    )  # fmt: skip


def _stopping_rule(
    top_k: int | None, min_effect: float | None
) -> tuple[int | None, Callable[[list[float]], float], str]:
    """(nodes to verify first by rank, τ from the exact effects so far, a description)."""
    if top_k is None and min_effect is None:
        top_k = 10
    if top_k is not None and top_k < 1:
        raise ConfigError(f"expected top_k of at least 1 but got {top_k}")
    if min_effect is not None and min_effect <= 0:
        raise ConfigError(f"expected a positive min_effect but got {min_effect}")

    def tau(exact: list[float]) -> float:
        found = sorted((abs(v) for v in exact), reverse=True)
        kth = found[top_k - 1] if top_k is not None and len(found) >= top_k else 0.0
        if top_k is None:
            return float(min_effect or 0.0)
        return kth if min_effect is None else min(kth, min_effect)

    parts = ([f"top {top_k}"] if top_k else []) + (
        [f"|effect| >= {min_effect:g}"] if min_effect is not None else []
    )
    return top_k, tau, " and ".join(parts)


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
