"""The smallest prefix of an edge ranking whose circuit reaches a faithfulness target.

Along a ranking, the circuit of the first k edges (completed into ``input`` → ``logits``
paths by the caller) has a size n(k) and a faithfulness F(k), each F one exact circuit run
per pair. F is not monotone in k, but it rises on the whole, so the search

1. finds the longest prefix k_max whose circuit has at most ``max_edges`` edges (n(k) is
   cheap: no model run),
2. evaluates the ladder k = 1, 2, 4, … and k_max in one batch (the clean and corrupt runs
   shared by all rungs),
3. bisects between the last rung below the target and the first rung that reaches it,
   one evaluation a step.

That is about 2·log2(k_max) evaluations instead of k_max. It returns the smallest prefix
found that reaches the target; when no rung reaches it, the prefix with the highest F seen
(and says the target was not reached). Every evaluation is recorded, so the F-versus-size
curve the search saw travels with the circuit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from circuitgraph.errors import ConfigError

__all__ = ["DEFAULT_MAX_EDGES", "DEFAULT_TARGET", "Search", "check_target", "search_prefix"]

#: the faithfulness a default circuit must reach
DEFAULT_TARGET = 0.8
#: the most edges a default circuit may have (scored edges; internal ones not counted)
DEFAULT_MAX_EDGES = 1000


@dataclass(frozen=True)
class Search:
    """What a target search found: the chosen prefix and every evaluation on the way.

    ``evaluations`` holds ``(prefix, circuit edges, F)`` in the order they were run.
    """

    target: float
    max_edges: int
    prefix: int
    evaluations: tuple[tuple[int, int, float], ...]
    #: edges in the ranking, and how many of its first edges fit within ``max_edges``
    n_ranked: int = 0
    fits: int = 0

    @property
    def exhausted(self) -> bool:
        """Whether the whole ranking fit within ``max_edges`` (more edges cannot help)."""
        return self.fits == self.n_ranked

    @property
    def chosen(self) -> tuple[int, int, float]:
        """The evaluation of the chosen prefix, ``(0, 0, nan)`` when nothing was evaluated."""
        for row in self.evaluations:
            if row[0] == self.prefix:
                return row
        return (0, 0, math.nan)

    @property
    def reached(self) -> bool:
        return self.chosen[2] >= self.target

    def summary(self) -> str:
        """One sentence: the size and F found, and whether the target was reached.

        Example:
            >>> Search(0.8, 100, 4, ((1, 2, 0.3), (4, 6, 0.85))).summary()
            'The smallest circuit found with faithfulness >= 0.8 has 6 edges (F = 0.850, the top 4 ranked edges completed into input -> logits paths; 2 circuits evaluated).'
        """
        k, n, f = self.chosen
        runs = f"{len(self.evaluations)} circuits evaluated"
        if self.reached:
            return (
                f"The smallest circuit found with faithfulness >= {self.target:g} has "
                f"{n} edges (F = {f:.3f}, the top {k} ranked edges completed into input -> "
                f"logits paths; {runs})."
            )
        best = f"the best has {n} edges, F = {f:.3f}" if k else "no circuit fits"
        if self.exhausted and k:
            return (
                f"No circuit among the {self.n_ranked} ranked edges reached faithfulness >= "
                f"{self.target:g}: {best} ({runs}); keep more nodes (--keep-nodes) or lower "
                "--target-faithfulness."
            )
        return (
            f"No circuit of at most {self.max_edges} edges reached faithfulness >= "
            f"{self.target:g}: {best} ({runs}); allow more edges (--max-edges), keep more "
            "nodes (--keep-nodes) or lower --target-faithfulness."
        )

    def to_json(self) -> dict[str, Any]:
        k, n, f = self.chosen
        return {
            "target": self.target, "max_edges": self.max_edges, "reached": self.reached,
            "prefix": k, "n_edges": n, "faithfulness": f if math.isfinite(f) else None,
            "n_ranked": self.n_ranked, "fits": self.fits,
            "evaluations": [list(row) for row in self.evaluations],
            "summary": self.summary(),
        }  # fmt: skip


def check_target(target: Any, max_edges: Any) -> None:
    """Refuse a target outside (0, ∞) or a ``max_edges`` below 1, in one sentence."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
        raise ConfigError(f"expected a faithfulness target > 0 (e.g. 0.8) but got {target!r}")
    if not math.isfinite(target):
        raise ConfigError(f"expected a finite faithfulness target but got {target!r}")
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 1:
        raise ConfigError(f"expected max_edges to be a whole number >= 1 but got {max_edges!r}")


def search_prefix(
    n_ranked: int,
    size: Callable[[int], int],
    evaluate: Callable[[Sequence[int]], Sequence[float]],
    target: float = DEFAULT_TARGET,
    max_edges: int = DEFAULT_MAX_EDGES,
) -> Search:
    """Search the prefixes ``1..n_ranked`` of a ranking for the smallest that reaches ``target``.

    ``size(k)`` is the circuit size of prefix k and ``evaluate(ks)`` the faithfulness of the
    prefixes ``ks``, run together. The longest prefix within ``max_edges`` is found by
    bisection on ``size``, which assumes it rarely falls as k grows (path completion can make
    a longer prefix's circuit a few edges smaller); the chosen prefix always fits.

    Example:
        >>> f = lambda k: min(k / 50, 1.0)  # F rises with the prefix
        >>> s = search_prefix(200, lambda k: k, lambda ks: [f(k) for k in ks], 0.8, 150)
        >>> s.prefix, s.reached, len(s.evaluations) < 20
        (40, True, True)
    """
    check_target(target, max_edges)
    top = _longest(n_ranked, size, max_edges)
    if top == 0:
        return Search(float(target), max_edges, 0, (), n_ranked, 0)
    ladder = _ladder(top)
    seen: dict[int, tuple[int, int, float]] = {}
    rows: list[tuple[int, int, float]] = []

    def run(ks: Sequence[int]) -> None:
        for k, f in zip(ks, evaluate(ks), strict=True):
            seen[k] = (k, size(k), float(f))
            rows.append(seen[k])

    run(ladder)
    hits = [k for k in ladder if seen[k][2] >= target]
    if not hits:
        best = max(ladder, key=lambda k: (seen[k][2], -k))
        return Search(float(target), max_edges, best, tuple(rows), n_ranked, top)
    hi = hits[0]
    lo = max((k for k in ladder if k < hi), default=0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        run([mid])
        if seen[mid][2] >= target:
            hi = mid
        else:
            lo = mid
    return Search(float(target), max_edges, hi, tuple(rows), n_ranked, top)


def _longest(n_ranked: int, size: Callable[[int], int], max_edges: int) -> int:
    """The largest k ≤ n_ranked with size(k) ≤ max_edges (bisection: size is non-decreasing)."""
    if n_ranked == 0 or size(1) > max_edges:
        return 0
    if size(n_ranked) <= max_edges:
        return n_ranked
    lo, hi = 1, n_ranked  # size(lo) fits, size(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if size(mid) <= max_edges:
            lo = mid
        else:
            hi = mid
    return lo


def _ladder(top: int) -> list[int]:
    """1, 2, 4, … below ``top``, then ``top``."""
    out = [1 << i for i in range(top.bit_length()) if (1 << i) < top]
    return [*out, top]
