"""Faithfulness curves over fractions of the ranked edges, and MIB's integrated scores.

The MIB circuit-localisation track (Mueller et al., 2025) scores a ranking of edges by
two areas under its faithfulness curve. We compute them as MIB's evaluation code does:

* **Grid.** The fractions of the model's edges ``0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%,
  50%, 100%`` (:data:`MIB_FRACTIONS`); the circuit at fraction p is the top
  ``int(p · N)`` edges (rounded down), N = every edge of the model, not just the scored ones.
* **Faithfulness.** f = (L_C − L_corrupt)/(L_clean − L_corrupt), the metric averaged over
  the pairs before the ratio (DESIGN §2). The empty circuit is the corrupt run (f = 0) and
  the full one the clean run (f = 1), so those two points need no forward pass.
* **Areas.** The trapezoid rule over the fractions themselves (a linear axis from 0.001 to
  1, not normalised by its width 0.999): CPR = Σ (p₂ − p₁)(f₁ + f₂)/2 (higher is better),
  CMD = Σ (p₂ − p₁)(|1 − f₁| + |1 − f₂|)/2 (lower is better).
* **Rankings.** CMD ranks edges by |score|. CPR ranks them by their signed contribution
  (MIB keeps the sign of EAP's loss-signed scores for CPR): here the edges whose patching
  moves the metric furthest towards its corrupt value come first, i.e. by −signed when
  L_clean > L_corrupt (logit difference, log-prob) and by +signed when it is the other way
  round (KL).
* **Unscored edges.** Edges the method did not score (outside the screened nodes, or
  outside a circuit file) count in N with score 0, as in a MIB file that lists every edge:
  they rank after the scored ones for CMD and between the positive and the negative ones for
  CPR, in the model's edge order.

Example:
    >>> round(cpr([0.1, 0.5, 1.0], [0.2, 0.6, 1.0]), 4), round(cmd([0.1, 0.5, 1.0], [0.2, 0.6, 1.0]), 4)
    (0.56, 0.34)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, can_feed, edge_sources, edge_targets
from circuitgraph.scores import EdgeScores

__all__ = [
    "GAP_TOLERANCE",
    "MIB_FRACTIONS",
    "MIBScores",
    "area",
    "check_fractions",
    "cmd",
    "cpr",
    "edge_counts",
    "gap_warning",
    "mib_scores",
    "model_edges",
    "ranked_edges",
]

#: MIB's grid of edge-count fractions (its ``evaluate_area_under_curve`` default)
MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

#: the clean − corrupt gap counts as small below this fraction of the metric's size
GAP_TOLERANCE = 0.1


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """The grid as a tuple, refused unless it is at least two increasing values in (0, 1].

    Example:
        >>> check_fractions([0.01, 0.1, 1])
        (0.01, 0.1, 1.0)
    """
    out = tuple(float(f) for f in fractions)
    ok = len(out) >= 2 and all(0 < f <= 1 for f in out)
    if not ok or any(b <= a for a, b in itertools.pairwise(out)):
        raise ConfigError(
            f"expected at least two increasing edge fractions in (0, 1] but got {list(out)}; "
            "pass e.g. 0.001,0.01,0.1,1"
        )
    return out


def edge_counts(n_edges: int, fractions: Sequence[float] = MIB_FRACTIONS) -> list[int]:
    """Edges in the circuit at each fraction: ``int(p · n_edges)``, rounded down as MIB does.

    Example:
        >>> edge_counts(479)
        [0, 0, 2, 4, 9, 23, 47, 95, 239, 479]
    """
    return [int(p * n_edges) for p in fractions]


def area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid-rule area under ``values`` over ``fractions`` (a linear axis).

    Example:
        >>> area([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
        0.75
    """
    if len(fractions) != len(values) or len(values) < 2:
        raise ConfigError(
            f"expected one value per fraction and at least two of them but got "
            f"{len(values)} values for {len(fractions)} fractions"
        )
    return sum(
        (x2 - x1) * (y1 + y2) / 2
        for x1, x2, y1, y2 in zip(fractions, fractions[1:], values, values[1:], strict=False)
    )


def cpr(fractions: Sequence[float], faithfulness: Sequence[float]) -> float:
    """MIB's circuit performance ratio: the area under the faithfulness curve (higher is better).

    Example:
        >>> cpr([0.5, 1.0], [0.5, 1.0])
        0.375
    """
    return area(fractions, faithfulness)


def cmd(fractions: Sequence[float], faithfulness: Sequence[float]) -> float:
    """MIB's circuit–model distance: the area between the faithfulness curve and 1 (lower is
    better); a curve above 1 counts as far as one below it.

    Example:
        >>> cmd([0.5, 1.0], [1.5, 1.0])
        0.125
    """
    return area(fractions, [abs(1.0 - f) for f in faithfulness])


@dataclass(frozen=True)
class MIBScores:
    """CPR and CMD of one edge ranking, with the curves they integrate.

    ``sizes[i]`` edges make the circuit at ``fractions[i]`` of the model's ``n_edges``;
    ``cpr_curve`` is the faithfulness of the top edges by signed contribution, ``cmd_curve``
    by absolute score; ``n_scored`` edges had a score (the rest count as 0).

    Example:
        >>> s = MIBScores((0.5, 1.0), (1, 2), 2, 2, (0.5, 1.0), (1.5, 1.0))
        >>> s.cpr, s.cmd
        (0.375, 0.125)
    """

    fractions: tuple[float, ...]
    sizes: tuple[int, ...]
    n_edges: int
    n_scored: int
    cpr_curve: tuple[float, ...]
    cmd_curve: tuple[float, ...]

    @property
    def cpr(self) -> float:
        return cpr(self.fractions, self.cpr_curve)

    @property
    def cmd(self) -> float:
        return cmd(self.fractions, self.cmd_curve)

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``G.graph["mib"]``, JSON files and ``--json`` summaries."""
        return {
            "cpr": self.cpr,
            "cmd": self.cmd,
            "fractions": list(self.fractions),
            "sizes": list(self.sizes),
            "n_edges": self.n_edges,
            "n_scored": self.n_scored,
            "cpr_curve": list(self.cpr_curve),
            "cmd_curve": list(self.cmd_curve),
        }


def model_edges(info: Any) -> list[Edge]:
    """Every edge of the model described by ``info`` (a ModelInfo), in source-major order
    (parallel blocks: no head feeds its own layer's MLP).

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> len(model_edges(ModelInfo("m", 1, 1, 1, 8, 8, 8, "LN", False, True, False, 5, 8)))
        8
    """
    targets, parallel = edge_targets(info), bool(info.parallel_blocks)
    return [Edge(s, t) for s in edge_sources(info) for t in targets if can_feed(s, t, parallel)]


def ranked_edges(
    scores: EdgeScores | Sequence[tuple[Edge, float, float]],
    everything: Sequence[Edge],
    by: str = "score",
    direction: float = -1.0,
) -> list[Edge]:
    """Every edge of ``everything`` ranked for a MIB curve; unscored edges count as score 0.

    ``scores`` is an :class:`~circuitgraph.scores.EdgeScores` or ``(edge, signed, score)``
    rows. ``by="score"`` ranks by the absolute score (CMD); ``by="signed"`` by
    ``direction · signed`` (CPR; ``direction`` is the sign of L_corrupt − L_clean, so that
    edges carrying the behaviour come first). Ties keep the scores' order, then the model's.

    Example:
        >>> a, b, c = (Edge.parse(x) for x in ("input->logits", "input->m0", "m0->logits"))
        >>> [e.id for e in ranked_edges([(b, 0.5, 0.5), (c, -2.0, 2.0)], [a, b, c], "signed")]
        ['m0->logits', 'input->logits', 'input->m0']
    """
    rows = _rows(scores)
    known = {e: (s, a) for e, s, a in rows}
    stray = [e for e in known if e not in set(everything)]
    if stray:
        raise ConfigError(
            f"expected edges of this model but the scores hold {stray[0].id}; score the model "
            "the circuit was found on"
        )
    order = [e for e, _, _ in rows] + [e for e in everything if e not in known]
    key: Callable[[Edge], float]
    if by == "score":
        key = lambda e: known.get(e, (0.0, 0.0))[1]  # noqa: E731
    elif by == "signed":
        key = lambda e: direction * known.get(e, (0.0, 0.0))[0]  # noqa: E731
    else:
        raise ConfigError(f"expected ranking by 'score' or 'signed' but got {by!r}")
    return sorted(order, key=lambda e: -key(e))  # stable: ties keep the order above


def _rows(
    scores: EdgeScores | Sequence[tuple[Edge, float, float]],
) -> list[tuple[Edge, float, float]]:
    if isinstance(scores, EdgeScores):
        return [(e, *scores[e]) for e in scores.ranking()]
    return [(e, float(s), float(a)) for e, s, a in scores]


def mib_scores(
    model: Any,
    pairs: Any,
    scores: EdgeScores | Sequence[tuple[Edge, float, float]],
    metric: str = "logit_diff",
    fractions: Sequence[float] = MIB_FRACTIONS,
    batch_size: int = 32,
    *,
    extra_sizes: Sequence[int] = (),
    progress: Callable[[int], None] | None = None,
) -> tuple[MIBScores, list[tuple[int, float]]]:
    """CPR and CMD of an edge ranking on ``model`` and ``pairs``, measured by exact circuit
    runs at each fraction of the grid (see the module docstring for every convention).

    Also returns the faithfulness curve of the ranking by absolute score at the grid's sizes
    and ``extra_sizes`` (e.g. the pipeline's own curve sizes), all from one set of runs.

    Example:
        >>> import circuitgraph as cg
        >>> model, info = cg.load_model("zoo:gpt2-4l")  # doctest: +SKIP
        >>> pairs = cg.make_pairs("ioi", model.tokenizer, 32)  # doctest: +SKIP
        >>> found, curve = cg.mib_scores(model, pairs, cg.attribute_edges(model, pairs, "logit_diff", "eap"))  # doctest: +SKIP
        >>> found.cpr, found.cmd  # doctest: +SKIP
    """
    from circuitgraph.model import model_info
    from circuitgraph.patching import evaluate_circuits

    grid = check_fractions(fractions)
    everything = model_edges(model_info(model))
    n = len(everything)
    sizes = edge_counts(n, grid)
    wanted = sorted({*sizes, *(s for s in extra_sizes if 0 <= s <= n)})

    def curve(order: list[Edge], at: list[int]) -> tuple[dict[int, float], float]:
        runs = [s for s in at if 0 < s < n]  # f(∅) = 0 and f(all) = 1 need no run
        evals = evaluate_circuits(
            model, pairs, [order[:s] for s in runs], metric, batch_size, progress
        )
        f = {0: 0.0, n: 1.0} | {s: ev.faithfulness for s, ev in zip(runs, evals, strict=True)}
        gap = evals[0].metric_corrupt - evals[0].metric_clean if evals else -1.0
        return f, gap

    by_score, gap = curve(ranked_edges(scores, everything, "score"), wanted)
    direction = 1.0 if gap > 0 else -1.0
    by_signed, _ = curve(ranked_edges(scores, everything, "signed", direction), sizes)
    found = MIBScores(
        grid, tuple(sizes), n, len(_rows(scores)),
        tuple(by_signed[s] for s in sizes), tuple(by_score[s] for s in sizes),
    )  # fmt: skip
    return found, [(s, by_score[s]) for s in wanted]


def gap_warning(metric_clean: float, metric_corrupt: float) -> str | None:
    """A one-line warning when the clean − corrupt gap is too small for faithfulness to mean much.

    Small means |L_clean − L_corrupt| below :data:`GAP_TOLERANCE` (10%) of the metric's own
    size max(|L_clean|, |L_corrupt|), or below 1e-6 (nothing to recover): F divides by
    that gap, so noise of that order in L_C moves F by 1 or more.

    Example:
        >>> gap_warning(3.0, -2.0) is None, gap_warning(2.0, 1.9)[:27]
        (True, 'warning: the clean − corrup')
    """
    gap = metric_clean - metric_corrupt
    size = max(abs(metric_clean), abs(metric_corrupt))
    if math.isfinite(gap) and abs(gap) >= max(GAP_TOLERANCE * size, 1e-6):
        return None
    return (
        f"warning: the clean − corrupt gap {gap:+.3g} is small (under {GAP_TOLERANCE:.0%} of "
        f"the metric's size {size:.3g}), so faithfulness divides by little and is unreliable; "
        "use pairs whose corrupt prompt changes the answer more"
    )
