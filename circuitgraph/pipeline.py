"""The whole pipeline: screen nodes, verify, bound what was missed, attribute edges among
the kept nodes, prune into a circuit, measure its faithfulness.

Example:
    >>> from circuitgraph import load_model
    >>> from circuitgraph.tasks import make_pairs
    >>> model, info = load_model("zoo:attn-only-2l")  # doctest: +SKIP
    >>> pairs = make_pairs("induction", model.tokenizer, 64)  # doctest: +SKIP
    >>> found = discover_circuit(model, pairs, DiscoverConfig())  # doctest: +SKIP
    >>> found.circuit.graph["faithfulness"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import networkx as nx
import torch

from circuitgraph.attribution import (
    attribute_edges,
    attribute_nodes,
    diagnose,
    edge_candidates,
    verify_nodes,
)
from circuitgraph.attribution.diagnostics import CAVEAT, Diagnosis
from circuitgraph.attribution.sequential import diagnose_until, overhead_passes
from circuitgraph.attribution.verify import Verification, verify_auto
from circuitgraph.errors import ConfigError
from circuitgraph.faithfulness import MIB_FRACTIONS, MIBScores, check_fractions, mib_scores
from circuitgraph.graph import build_circuit, circuit_edges, model_attrs
from circuitgraph.model import model_info
from circuitgraph.nodes import Edge, Node
from circuitgraph.patching import (
    CircuitEval,
    evaluate_circuit,
    evaluate_circuits,
    faithfulness_curve,
    patch_edges,
)
from circuitgraph.run import NONLINEAR, far_from_exact, metric_gap
from circuitgraph.scores import EdgeScores, NodeScores
from circuitgraph.search import DEFAULT_MAX_EDGES, DEFAULT_TARGET, check_target
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.text import plural

__all__ = ["DiscoverConfig", "Discovery", "circuit_edges", "discover", "discover_circuit"]

#: a progress reporter: (stage name, total units) → callback taking units done
Stages = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class DiscoverConfig:
    """Every choice the pipeline makes; the defaults are the ones ``circuitgraph discover`` uses."""

    metric: str = "logit_diff"
    node_method: str = "atp*"
    kinds: tuple[str, ...] = ("head", "q", "k", "v", "mlp")
    #: screen only nodes in these layers (None: every layer; input and logits always)
    layers: tuple[int, ...] | None = None
    per_position: bool = False
    #: ``"auto"``: verify in the screen's order until no unverified node can reach τ (the
    #: ``verify_top_k``-th largest exact effect, or ``min_effect``) at ``confidence``; a
    #: number K: verify the screen's top K (0: none)
    verify: int | str = "auto"
    verify_top_k: int = 10
    #: τ given directly (an |effect| in the metric's units) instead of the k-th largest
    min_effect: float | None = None
    #: the bound on the unverified nodes is driven below this fraction of |clean − corrupt|
    #: (fresh subsets in rounds) unless the budget runs out
    bound_target: float = 0.1
    #: forward passes per pair for verification and the bound together (default: the
    #: exhaustive sweep of the screened nodes, nodes + 2, which they never exceed)
    budget: float | None = None
    #: the old knobs: a fixed top K (as ``verify=K``) and a fixed draw of this many subsets
    #: (0: no bound) instead of rounds until the target
    verify_k: int | None = None
    diagnose_subsets: int | None = None
    diagnose_p: float = 0.25
    confidence: float = 0.95
    keep_nodes: int = 20
    edge_method: str = "eap-ig"
    #: the default rule: the smallest circuit of complete input -> logits paths, along the
    #: ranking by ``rank_by``, whose faithfulness reaches this (at most ``max_edges`` edges)
    target_faithfulness: float = DEFAULT_TARGET
    max_edges: int = DEFAULT_MAX_EDGES
    rank_by: str = "signed"
    #: double ``keep_nodes`` (up to 3 times) while every edge among the kept nodes fits
    #: within ``max_edges`` and still misses the target
    grow_nodes: bool = True
    #: fixed rules instead of the target (at most one; by |score|, as before)
    edge_top_n: int | None = None
    edge_threshold: float | None = None
    edge_greedy: int | None = None
    #: exact edge patching of the circuit's edges, the top this many by |score| (0: none)
    verify_edges: int = 100
    curve_sizes: tuple[int, ...] = (5, 10, 20, 50, 100)
    #: fractions of the model's edges for MIB's CPR/CMD (empty: skip them)
    edge_fractions: tuple[float, ...] = MIB_FRACTIONS
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        chosen = [
            x for x in (self.edge_top_n, self.edge_threshold, self.edge_greedy) if x is not None
        ]
        if len(chosen) > 1:
            raise ConfigError(
                "expected at most one fixed edge selection (top-n, threshold or greedy; none: "
                f"the faithfulness target) but got {len(chosen)}; pass one of them"
            )
        check_target(self.target_faithfulness, self.max_edges)
        if self.rank_by not in ("signed", "score"):
            raise ConfigError(f"expected rank_by 'signed' or 'score' but got {self.rank_by!r}")
        for name, low in (("keep_nodes", 1), ("verify_top_k", 1), ("batch_size", 1)):
            _at_least(name, getattr(self, name), low)
        _at_least("verify_edges", self.verify_edges, 0)
        self._check_verification()
        for name in ("diagnose_p", "confidence", "bound_target"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:  # also refuses NaN
                raise ConfigError(f"expected {name} strictly between 0 and 1 but got {value}")
        if self.edge_top_n is not None:
            _at_least("edge_top_n", self.edge_top_n, 1)
        if self.edge_greedy is not None:
            _at_least("edge_greedy", self.edge_greedy, 1)
        if self.edge_threshold is not None and not 0.0 <= self.edge_threshold < math.inf:
            raise ConfigError(
                f"expected edge_threshold to be a finite number >= 0 (edges with |score| at least "
                f"that) but got {self.edge_threshold}"
            )
        if self.edge_fractions:
            check_fractions(self.edge_fractions)

    def _check_verification(self) -> None:
        if self.verify != "auto":
            _at_least("verify (a number of top nodes, or 'auto')", self.verify, 0)
        if self.verify_k is not None:
            _at_least("verify_k", self.verify_k, 0)
            if self.verify != "auto":
                raise ConfigError(
                    f"expected either verify or the older verify_k but got both (verify="
                    f"{self.verify!r}, verify_k={self.verify_k}); pass verify alone"
                )
        if self.diagnose_subsets not in (None, 0):
            _at_least("diagnose_subsets (or 0 to skip the bound)", self.diagnose_subsets, 4)
        if self.min_effect is not None and not 0.0 < self.min_effect < math.inf:
            raise ConfigError(
                f"expected min_effect to be a positive finite |effect| but got {self.min_effect}"
            )
        if self.budget is not None and not 3.0 <= self.budget < math.inf:
            raise ConfigError(
                f"expected budget to be at least 3 forward passes per pair but got {self.budget}"
            )

    @property
    def edge_rule(self) -> str:
        """``"target"`` unless a fixed rule (``top_n``, ``threshold``, ``greedy``) is set."""
        for rule in ("top_n", "threshold", "greedy"):
            if getattr(self, f"edge_{rule}") is not None:
                return rule
        return "target"

    @property
    def verification(self) -> int | str:
        """``"auto"`` or the fixed number of top nodes verified (``verify_k`` wins when set)."""
        return self.verify if self.verify_k is None else self.verify_k


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"expected {name} to be a whole number >= {low} but got {value!r}")


@dataclass(frozen=True)
class Cost:
    """Forward passes per pair spent verifying nodes and bounding the rest, against the
    exhaustive sweep of every screened node (one pass each plus the base and source runs)
    and the budget they were given."""

    exhaustive: float
    budget: float
    verification: float
    diagnosis: float

    @property
    def spent(self) -> float:
        return self.verification + self.diagnosis

    @property
    def left(self) -> float:
        return max(self.budget - self.spent, 0.0)

    def summary(self) -> str:
        return (
            f"{self.spent:g} forward passes per pair spent verifying and bounding "
            f"({self.verification:g} + {self.diagnosis:g}) of a budget of {self.budget:g} "
            f"({self.left:g} left); the exhaustive sweep of every screened node costs "
            f"{self.exhaustive:g}"
        )

    def to_json(self) -> dict[str, float]:
        return {
            "exhaustive": self.exhaustive, "budget": self.budget, "spent": self.spent,
            "verification": self.verification, "diagnosis": self.diagnosis, "left": self.left,
        }  # fmt: skip


@dataclass(frozen=True)
class Discovery:
    """Everything the pipeline found, with the time each stage took (seconds)."""

    node_scores: NodeScores
    verification: Verification | None
    diagnosis: Diagnosis | None
    edge_scores: EdgeScores
    circuit: nx.DiGraph
    faithfulness: CircuitEval
    curve: list[tuple[int, float]]
    timings: dict[str, float] = field(default_factory=dict)
    #: MIB's CPR and CMD over ``DiscoverConfig.edge_fractions`` (None when skipped)
    mib: MIBScores | None = None
    #: forward passes per pair spent on verification and the bound, against the sweep
    cost: Cost | None = None

    @property
    def graph(self) -> nx.DiGraph:
        """The circuit (the same graph as ``circuit``)."""
        return self.circuit

    @property
    def report(self) -> str:
        """A short Markdown report: size, faithfulness, bound, top nodes, edges, timings."""
        from circuitgraph.report import report_md

        return report_md(self)


def _no_progress(stage: str, total: int) -> Callable[[int], None]:
    return lambda done: None


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the time spent in the block to ``timings[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def discover(
    model: Any,
    pairs: PromptPairs,
    config: DiscoverConfig | None = None,
    *,
    stages: Stages | None = None,
    attrs: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Discovery:
    """The whole pipeline with the defaults of ``circuitgraph discover``, any of which
    ``overrides`` (fields of :class:`DiscoverConfig`) or ``config`` replace.

    Example:
        >>> import circuitgraph as cg
        >>> model, info = cg.load_model("zoo:attn-only-2l")  # doctest: +SKIP
        >>> found = cg.discover(model, cg.make_pairs("induction", model.tokenizer, 16))  # doctest: +SKIP
        >>> print(found.report)  # doctest: +SKIP
    """
    base = config or DiscoverConfig()
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in fields(DiscoverConfig)})
        if unknown:
            raise ConfigError(
                f"expected options among the fields of DiscoverConfig but got {unknown}"
            )
        base = replace(base, **overrides)
    return discover_circuit(model, pairs, base, stages or _no_progress, attrs)


def discover_circuit(
    model: Any,
    pairs: PromptPairs,
    config: DiscoverConfig,
    stages: Stages = _no_progress,
    attrs: Mapping[str, Any] | None = None,
) -> Discovery:
    """Run the pipeline of DESIGN §1 on ``pairs`` and return what it found.

    ``stages(name, total)`` is called at the start of each stage and returns a callback
    that receives units of work as they finish (the CLI draws progress bars with it).
    """
    info = model_info(model)
    c, n = config, len(pairs)
    t: dict[str, float] = {}
    with _timed(t, "check"):
        # Degenerate pairs are refused and a vanishing clean − corrupt gap is warned about
        # before any screening: two forward passes per pair, against minutes of work. The
        # gap is also the unit the bound on unverified nodes is stated and targeted in.
        measured = metric_gap(model, pairs, c.metric, c.batch_size)
        measured.warn()
    with _timed(t, "screen"):
        nodes = attribute_nodes(
            model, pairs, c.metric, c.node_method, c.kinds, c.per_position, c.batch_size,
            progress=stages("screen nodes", 0),  # units differ by method: no fixed total
            layers=c.layers,
        )  # fmt: skip
    budget = c.budget if c.budget is not None else len(nodes) + overhead_passes(c.metric)
    verification = _verify(model, pairs, nodes, measured.gap, budget, c, stages, t)
    estimate_warning = _estimate_warning(verification)
    spent = 0.0 if verification is None else verification.forward_passes
    diagnosis, more = _diagnose(
        model, pairs, nodes, verification, measured.gap, budget - spent, c, stages, t
    )
    cost = Cost(len(nodes) + overhead_passes(c.metric), budget, spent, more)
    graph_attrs = {
        **model_attrs(info), **dict(attrs or {}), "metric": c.metric,
        "node_method": c.node_method, "edge_method": c.edge_method, "n_pairs": n,
        "config": asdict(c),
    }  # fmt: skip
    tries: list[tuple[nx.DiGraph, EdgeScores]] = []
    keep, available = c.keep_nodes, len(_whole_nodes(nodes, len(nodes)).nodes)
    while True:
        with _timed(t, "edges"):
            cands = edge_candidates(info, _whole_nodes(nodes, keep), keep=None)
            edges = attribute_edges(
                model, pairs, c.metric, c.edge_method, cands, c.batch_size,
                progress=stages("attribute edges", n),
            )  # fmt: skip
        with _timed(t, "circuit"):
            circuit = build_circuit(
                edges, nodes, **_rule(model, pairs, measured.gap, c, stages),
                verified_nodes=_verified(verification),
                attrs={**graph_attrs, "keep_nodes": min(keep, available)},
            )  # fmt: skip
        tries.append((circuit, edges))
        if not _should_grow(circuit, keep, available, len(tries), c):
            break
        keep *= 2  # the kept nodes' edges cannot reach the target: widen the candidates
    circuit, edges = max(tries, key=lambda ce: _reach(ce[0]))
    if len(tries) > 1:
        circuit.graph["node_growth"] = [
            {"keep_nodes": g.graph["keep_nodes"], **{k: g.graph["search"][k] for k in
             ("reached", "n_edges", "faithfulness")}} for g, _ in tries
        ]  # fmt: skip
    with _timed(t, "circuit"):
        kept = circuit_edges(circuit)
        checked = _add_exact_edges(model, pairs, circuit, edges, kept, c, stages)
    with _timed(t, "faithfulness"):
        faith = evaluate_circuit(model, pairs, kept, c.metric, c.batch_size)
        mib, curve = _curves(model, pairs, edges, circuit, c, stages)
    circuit.graph.update(
        faithfulness=faith.faithfulness, faithfulness_curve=[list(p) for p in curve],
        metric_clean=faith.metric_clean, metric_corrupt=faith.metric_corrupt,
        metric_circuit=faith.metric_circuit,
        mib=None if mib is None else mib.to_json(), estimate_warning=estimate_warning,
        **trust_attrs(verification, diagnosis, cost, checked, c, len(kept)),
    )  # fmt: skip
    return Discovery(nodes, verification, diagnosis, edges, circuit, faith, curve, t, mib, cost)


def _estimate_warning(verification: Verification | None) -> str | None:
    """A warning for the outputs (the circuit's ``estimate_warning``, the report, the CLI
    summary) when the verified top nodes' exact effects are far from their estimates: the
    model is strongly non-linear along these patches (Gemma-2/3-like), or the estimate is
    wrong for it, which ``circuitgraph check`` tells apart."""
    if verification is None or not len(verification.nodes):
        return None
    gap, flips = far_from_exact(verification.estimated, verification.true)
    if gap <= NONLINEAR and not flips:
        return None
    return (
        f"the {verification.method} estimates of the verified top nodes differ from exact "
        f"patching by up to {gap:.2f} of the largest exact effect ({flips} of "
        f"{len(verification.nodes)} change sign), so this model is strongly non-linear along "
        "these patches (or the estimate is wrong for it: `circuitgraph check` tells which); "
        "trust the exact values over the estimates"
    )


def _curves(
    model: Any,
    pairs: PromptPairs,
    edges: EdgeScores,
    circuit: nx.DiGraph,
    c: DiscoverConfig,
    stages: Stages,
) -> tuple[MIBScores | None, list[tuple[int, float]]]:
    """The faithfulness curve of the ranking by |score| at ``curve_sizes``, the circuit's own
    prefix and MIB's grid, and CPR/CMD on that grid (one set of shared clean/corrupt runs)."""
    sizes = [s for s in c.curve_sizes if s <= len(edges)]
    selection = circuit.graph["selection"]
    if selection["rule"] in ("top_n", "threshold"):  # others are not prefixes of this ranking
        sizes.append(selection["selected"])
    progress = stages("faithfulness curves", 0)
    if not c.edge_fractions:
        sizes = sorted(set(sizes))
        return None, faithfulness_curve(
            model, pairs, edges, sizes, c.metric, c.batch_size, progress
        )
    return mib_scores(
        model, pairs, edges, c.metric, c.edge_fractions, c.batch_size,
        extra_sizes=sizes, progress=progress,
    )  # fmt: skip


def _verify(
    model: Any,
    pairs: PromptPairs,
    nodes: NodeScores,
    gap: float,
    budget: float,
    c: DiscoverConfig,
    stages: Stages,
    t: dict[str, float],
) -> Verification | None:
    """Exact patching of the screen's top nodes: a fixed top K, or ``"auto"`` (until no
    unverified node can reach τ at the stated confidence, or the budget is spent)."""
    how = c.verification
    if how == "auto":
        with _timed(t, "verify"):
            return verify_auto(
                model, pairs, nodes, top_k=None if c.min_effect is not None else c.verify_top_k,
                min_effect=c.min_effect, confidence=c.confidence, budget=budget, p=c.diagnose_p,
                gap=gap, seed=c.seed, metric=c.metric, batch_size=c.batch_size,
                progress=stages("verify nodes until bounded", 0),
            )  # fmt: skip
    if int(how) <= 0:
        return None
    with _timed(t, "verify"):
        k = min(int(how), len(nodes))
        return verify_nodes(
            model, pairs, nodes, k=k, batch_size=c.batch_size,
            progress=stages("verify top nodes", len(pairs) * k),
        )  # fmt: skip


def _diagnose(
    model: Any,
    pairs: PromptPairs,
    nodes: NodeScores,
    verification: Verification | None,
    gap: float,
    left: float,
    c: DiscoverConfig,
    stages: Stages,
    t: dict[str, float],
) -> tuple[Diagnosis | None, float]:
    """The bound on the unverified nodes and the passes per pair it cost beyond verification.

    Auto-verification brings its own bound (below τ when it held); when that is above
    ``bound_target`` × |gap| and budget is left, fresh subsets are drawn in rounds until it
    is not (:func:`diagnose_until`, the screen as control variate, one group per layer).
    """
    verified = set(verification.nodes) if verification is not None else set()
    rest = [x for x in nodes.nodes if x not in verified]
    target = c.bound_target * abs(gap)
    earlier = None if verification is None else verification.diagnosis
    if earlier is not None:
        earlier = replace(earlier, target=target, gap=gap)
    if not rest or c.diagnose_subsets == 0:
        return (earlier if rest else None), 0.0
    if c.diagnose_subsets is not None:  # the old knob: one fixed draw of that many subsets
        with _timed(t, "diagnose"):
            d = diagnose(
                model, pairs, rest, c.metric, p=c.diagnose_p, n_subsets=c.diagnose_subsets,
                confidence=c.confidence, seed=c.seed, batch_size=c.batch_size, screen=nodes,
                gap=gap, bound_target=c.bound_target,
                progress=stages("diagnose the rest", len(pairs) * c.diagnose_subsets),
            )  # fmt: skip
        return d, d.forward_passes
    if (earlier is not None and earlier.bound <= target) or left < _MIN_ROUND or len(rest) < 2:
        return earlier, 0.0
    with _timed(t, "diagnose"):
        d = diagnose_until(
            model, pairs, rest, c.metric, screen=nodes, bound_target=c.bound_target, gap=gap,
            budget=left, confidence=c.confidence, p=c.diagnose_p, seed=c.seed + 1,
            batch_size=c.batch_size, progress=stages("bound the rest", 0),
        )  # fmt: skip
    return d, d.forward_passes


#: passes per pair below which no round of subsets is started (a first round's subsets
#: plus the base and source runs)
_MIN_ROUND = 34.0


def trust_attrs(
    verification: Verification | None,
    diagnosis: Diagnosis | None,
    cost: Cost,
    verified_edges: Sequence[Edge],
    c: DiscoverConfig,
    n_circuit: int | None = None,
) -> dict[str, Any]:
    """The circuit's graph attributes that say how far it can be trusted: which nodes and
    edges were verified exactly, the bound on the rest (absolute, as a fraction of the gap,
    and what it means), the passes spent against the sweep and the budget left."""
    d = diagnosis
    how = c.verification
    return {
        "diagnostic_bound": None if d is None else _finite(d.bound),
        "diagnostic_confidence": None if d is None else d.confidence,
        "diagnostic_relative_bound": None if d is None else d.relative_bound,
        "verification": {
            "rule": "auto" if how == "auto" else f"top {how}",
            "asked": None if verification is None else verification.asked or None,
            "threshold": None if verification is None else verification.threshold,
            "stopped": None if verification is None else verification.stopped or None,
            "nodes": [] if verification is None else [n.id for n in verification.nodes],
            "edges": [e.id for e in verified_edges],
            "cost": cost.to_json(),
            "summary": _trust_summary(verification, d, cost, len(verified_edges), n_circuit),
            "caveat": CAVEAT,
        },
        "diagnosis": None if d is None else d.to_json(k=10),
    }


def _trust_summary(
    v: Verification | None, d: Diagnosis | None, cost: Cost, n_edges: int, n_circuit: int | None
) -> str:
    parts = [v.summary() if v is not None else "No node was verified exactly."]
    if d is not None:  # the bound in the gap's units, with the caveat said once
        parts = [parts[0].replace(" " + d.caveat, ""), d.summary()]
    if n_circuit is not None and n_circuit > n_edges:  # --verify-edges capped it
        parts.append(
            f"{n_edges} of the circuit's {plural(n_circuit, 'edge')} (the largest by |score|) "
            "were verified by exact edge patching."
        )
    else:
        parts.append(
            f"The circuit's {plural(n_edges, 'edge')} were verified by exact edge patching."
        )
    parts.append(cost.summary() + ".")
    return " ".join(parts)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _whole_nodes(scores: NodeScores, keep: int) -> NodeScores:
    """The top ``keep`` whole nodes (per-position scores summed into their node)."""
    if not any(n.position is not None for n in scores.nodes):
        return scores.subset(scores.top_k(keep))
    order: list[Node] = []
    for node in scores.ranking():
        whole = node.at(None)
        if whole not in order:
            order.append(whole)
    kept = order[:keep]
    ones = torch.ones(len(kept), dtype=torch.float64)
    return NodeScores(tuple(kept), ones, ones, scores.method, scores.metric, scores.n_pairs)


def _verified(v: Verification | None) -> dict[Node | str, float]:
    if v is None:
        return {}
    return {n: float(x) for n, x in zip(v.nodes, v.true.tolist(), strict=True)}


def _add_exact_edges(
    model: Any,
    pairs: PromptPairs,
    circuit: nx.DiGraph,
    scores: EdgeScores,
    kept: Sequence[Edge],
    c: DiscoverConfig,
    stages: Stages,
) -> list[Edge]:
    """Verify the circuit's top ``verify_edges`` edges by |score| with exact edge patching
    (one forward each); returns the edges verified."""
    top = sorted(kept, key=lambda e: -scores[e][1])[: c.verify_edges]
    if not top:
        return []
    exact = patch_edges(
        model, pairs, top, c.metric, batch_size=c.batch_size,
        progress=stages("verify circuit edges", len(pairs) * len(top)),
    )  # fmt: skip
    for e in top:
        circuit.edges[e.src.id, e.dst.id].update(exact=exact[e][0], verified=True)
    return top


#: how many times the kept nodes may double when their edges cannot reach the target
_MAX_GROWTH = 3


def _should_grow(
    circuit: nx.DiGraph, keep: int, available: int, tried: int, c: DiscoverConfig
) -> bool:
    """Whether to double the kept nodes: the target was missed although every candidate
    edge among them fit within ``max_edges``, and more nodes are there to keep."""
    s = circuit.graph.get("search")
    if not c.grow_nodes or s is None or s["reached"] or s["fits"] < s["n_ranked"]:
        return False
    return keep < available and tried <= _MAX_GROWTH


def _reach(circuit: nx.DiGraph) -> tuple[bool, float]:
    """How good a try is: reached the target first, then the higher F."""
    s = circuit.graph.get("search") or {}
    f = s.get("faithfulness")
    return bool(s.get("reached")), -math.inf if f is None else float(f)


def _rule(
    model: Any, pairs: PromptPairs, gap: float, c: DiscoverConfig, stages: Stages
) -> dict[str, Any]:
    """``build_circuit``'s selection arguments: a fixed rule, or the faithfulness target
    searched with exact circuit runs (edges carrying clean − corrupt first)."""
    if c.edge_rule != "target":
        return {"top_n": c.edge_top_n, "threshold": c.edge_threshold, "greedy": c.edge_greedy}
    progress = stages("search the circuit", 0)

    def faithfulness(circuits: Sequence[Sequence[Edge]]) -> list[float]:
        evals = evaluate_circuits(model, pairs, circuits, c.metric, c.batch_size, progress)
        return [ev.faithfulness for ev in evals]

    return {
        "target": c.target_faithfulness, "faithfulness": faithfulness, "max_edges": c.max_edges,
        "rank_by": c.rank_by, "direction": -1.0 if gap > 0 else 1.0,
    }  # fmt: skip
