"""Random-subset diagnostics: a bound on what the screen may have missed (DESIGN §2).

After the top nodes are verified exactly, draw random subsets S of the unverified nodes
(each node in S independently with probability p), patch each subset jointly in one
forward pass, and estimate each node's effect as

    ê(n) = mean{I(S) : n ∈ S} − mean{I(S) : n ∉ S}.

For additive effects ê(n) is unbiased. As in AtP* (Kramár et al. 2024, §3.3), each node n
gets a one-sided Welch t-test of "|c(n)| ≥ θ" against "|c(n)| < θ", and "some unverified
node reaches θ" is rejected when every node's test rejects (an intersection–union test: its
p-value is the largest of the nodes' p-values, so no correction over the nodes is needed).
Inverting it gives the bound max_n |ê(n)| + t_{1−α}(ν_n)·se(n). ``correction="bonferroni"``
instead makes every node's bound hold simultaneously (t_{1−α/(2N)}); that is the
conservative choice when the nodes to verify are picked *from the same subsets*.

Variance reduction (``screen=``): the screen's own estimates Î(n) are a control variate.
The subsets then estimate only the screen's error,

    ĉ(n) = β Î(n) + ê_z(n),   z(S) = I(S) − β Σ_{m∈S} Î(m),

where β is the least-squares slope of I(S) on Σ_{m∈S} Î(m); ê_z is unbiased for c − βÎ
whatever β, and its variance is Σ_m (c(m) − βÎ(m))² / n_subsets instead of Σ_m c(m)² /
n_subsets. Interactions between nodes are attributed to them on average, so the bound is
exact only for additive effects; every report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.patching import patch_sets
from circuitgraph.run import Progress, clean_reference, resolve, run_metric
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, get_metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.text import plural

__all__ = [
    "CAVEAT",
    "CORRECTIONS",
    "Diagnosis",
    "GroupBound",
    "balanced_subsets",
    "control_variate",
    "diagnose",
    "draw_subsets",
    "metric_gap",
    "subset_effects",
    "t_quantile",
    "upper_bounds",
]

CAVEAT = (
    "The bound is exact only for additive effects: interactions between nodes are "
    "averaged into the per-node estimates, so strongly interacting nodes can exceed it."
)

Correction = Literal["paper", "bonferroni"]
#: ``paper``: AtP*'s intersection–union test (one-sided t_{1−α}); ``bonferroni``: every
#: node's bound simultaneously (t_{1−α/(2N)})
CORRECTIONS: tuple[str, ...] = ("paper", "bonferroni")


@dataclass(frozen=True)
class GroupBound:
    """One group's share of a sequential diagnosis (a layer, or all nodes).

    ``bound`` is the group's bound at its last test, made at level ``alpha`` with each node
    in a share ``p`` of the subsets; ``closed`` says whether it fell below the threshold it
    was tested against (``threshold``).
    """

    key: str
    n_nodes: int
    n_subsets: int
    tests: int
    bound: float
    alpha: float
    threshold: float
    closed: bool
    p: float = 0.25

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.key, "nodes": self.n_nodes, "subsets": self.n_subsets,
            "tests": self.tests, "bound": _finite(self.bound), "alpha": self.alpha,
            "threshold": _finite(self.threshold), "closed": self.closed, "p": self.p,
        }  # fmt: skip


@dataclass(frozen=True)
class Diagnosis:
    """The false-negative bound and the per-node estimates behind it.

    ``bound`` is an upper confidence bound (at ``confidence``) on the largest |effect| of
    any node in ``nodes``; ``upper`` holds each node's own bound, ``estimate`` and
    ``stderr`` the subset estimate ê(n) (with the control variate: ĉ(n)) and its standard
    error. ``gap`` is the clean − corrupt metric difference when known, so that
    :attr:`relative_bound` says the bound in the gap's units; ``needed_passes`` is the
    extrapolated number of forward passes per pair that would bring the bound down to
    ``target`` (None when it is already there or sampling alone cannot get there, in which
    case ``must_verify`` lists the nodes whose own estimate stands in the way).

    Example:
        >>> d = diagnose(model, pairs, unverified, p=0.25, n_subsets=200)  # doctest: +SKIP
        >>> print(d.summary())  # doctest: +SKIP
    """

    nodes: tuple[Node, ...]
    estimate: Float[Tensor, " n"]
    stderr: Float[Tensor, " n"]
    upper: Float[Tensor, " n"]
    bound: float
    confidence: float
    p: float
    n_subsets: int
    seed: int
    metric: str
    n_pairs: int
    forward_passes: float
    caveat: str = CAVEAT
    correction: str = "paper"
    beta: float | None = None
    gap: float | None = None
    target: float | None = None
    budget: float | None = None
    groups: tuple[GroupBound, ...] = ()
    needed_passes: float | None = None
    must_verify: tuple[Node, ...] = ()
    stopped: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_bound(self) -> float | None:
        """The bound as a fraction of |clean − corrupt| (None when the gap is unknown or 0)."""
        if self.gap is None or self.gap == 0:
            return None
        return self.bound / abs(self.gap)

    def rows(self) -> list[dict[str, Any]]:
        """One row per node, largest upper bound first."""
        order = sorted(range(len(self.nodes)), key=lambda i: -float(self.upper[i]))
        return [
            {
                "node": self.nodes[i].id,
                "estimate": float(self.estimate[i]),
                "stderr": float(self.stderr[i]),
                "upper": float(self.upper[i]),
            }
            for i in order
        ]

    def summary(self) -> str:
        design = (
            f"{plural(self.n_subsets, 'random subset')}, p={self.p:.3g}"
            + (
                f", screen as control variate (beta={self.beta:.3g})"
                if self.beta is not None
                else ""
            )
            + f", {plural(float(self.forward_passes), 'forward pass', 'forward passes')} per pair"
        )
        text = (
            f"With {self.confidence:.0%} confidence no unverified node ({len(self.nodes)}) has "
            f"|effect| above {self.bound:.4g} ({self.metric}; {design})."
        )
        rel = self.relative_bound
        if rel is not None:
            text += (
                f" That is {rel:.3g} x the clean - corrupt gap ({abs(self.gap or 0):.4g}): "
                + _meaning(rel)
            )
        advice = self.advice()
        return f"{text} {advice} {self.caveat}" if advice else f"{text} {self.caveat}"

    def advice(self) -> str:
        """What it would take to reach ``target`` (empty when there is no target or it is met)."""
        if self.target is None or self.bound <= self.target:
            return ""
        unit = self._in_gap(self.target)
        parts = [f"The target {self.target:.4g}{unit} was not reached"]
        cost = self.needed_passes
        if cost is not None:
            more = max(cost - self.forward_passes, 0.0)
            parts.append(
                f"about {cost:.0f} forward passes per pair in all ({more:.0f} more) would reach "
                "it, extrapolating the standard errors seen"
            )
        elif not self.groups and (cost := self.passes_for(self.target)) is not None:
            parts.append(
                f"a fresh draw of about {cost:.0f} subsets (forward passes per pair) would "
                "reach it, extrapolating the standard errors seen"
            )
        sweep = len(self.nodes) + 2
        if cost is not None and cost - (self.forward_passes if self.groups else 0) >= sweep:
            parts.append(
                f"verifying all {len(self.nodes)} unverified nodes exactly costs {sweep}, less"
            )
        if self.must_verify:
            ids = ", ".join(n.id for n in self.must_verify[:8])
            parts.append(
                f"{len(self.must_verify)} node(s) are themselves estimated above it and must be "
                f"verified exactly first (1 forward pass each): {ids}"
            )
        elif cost is None and (near := self._near(self.target)):
            ids = ", ".join(n.id for n in near[:8])
            parts.append(
                f"{len(near)} node(s) are estimated at or near it (|estimate| - stderr >= "
                f"target), which no number of subsets can rule out: verify them exactly (1 "
                f"forward pass each; verification with k='auto' does): {ids}"
            )
        return "; ".join(parts) + "."

    def _near(self, target: float) -> list[Node]:
        """Nodes whose estimate, less one standard error, reaches ``target``, largest first."""
        low = self.estimate.abs() - self.stderr
        idx = (low >= target).nonzero().flatten().tolist()
        return [self.nodes[i] for i in sorted(idx, key=lambda i: -float(low[i]))]

    def passes_for(self, target: float) -> float | None:
        """About how many forward passes per pair one fresh round of subsets would need for
        the bound to fall below ``target`` (standard errors shrink as 1/√subsets; the largest
        of the nodes' noises is allowed for), or None when some node's own estimate already
        reaches it: that node must be verified, sampling cannot rule it out.

        Example:
            >>> d = diagnose(model, pairs, rest, n_subsets=50)  # doctest: +SKIP
            >>> d.passes_for(0.1 * abs(d.gap))  # doctest: +SKIP
            412.0
        """
        if len(self.nodes) == 0 or self.bound <= target:
            return 0.0
        df = torch.full((1,), max(self.p * self.n_subsets - 1, 1.0), dtype=torch.float64)
        t = float(t_multipliers(df, 1.0 - self.confidence, self.correction)[0])
        need = _needed(self.estimate, self.stderr, t, target, max(self.n_subsets, 1))
        return None if not math.isfinite(need) else math.ceil(need) + 2.0

    def _in_gap(self, x: float) -> str:
        return f" ({x / abs(self.gap):.3g} x gap)" if self.gap else ""

    def table(self, k: int = 10) -> str:
        shown = min(k, len(self.nodes))
        lines = [
            self.summary(),
            f"top {shown} of {len(self.nodes)} unverified nodes by the upper bound, largest first:",
            f"{'node':<16}{'estimate':>12}{'stderr':>12}{'upper':>12}",
        ]
        for r in self.rows()[:k]:
            lines.append(
                f"{r['node']:<16}{r['estimate']:>12.4g}{r['stderr']:>12.4g}{r['upper']:>12.4g}"
            )
        return "\n".join(lines)

    def to_json(self, k: int = 20) -> dict[str, Any]:
        """The bound, what it means and costs, and the ``k`` nodes with the largest bounds."""
        return {
            "schema": "circuitgraph.diagnosis/1",
            "bound": _finite(self.bound),
            "relative_bound": self.relative_bound,
            "confidence": self.confidence,
            "correction": self.correction,
            "gap": self.gap,
            "target": self.target,
            "budget": self.budget,
            "forward_passes": self.forward_passes,
            "needed_passes": self.needed_passes,
            "must_verify": [n.id for n in self.must_verify],
            "n_unverified": len(self.nodes),
            "n_subsets": self.n_subsets,
            "p": self.p,
            "beta": self.beta,
            "seed": self.seed,
            "metric": self.metric,
            "n_pairs": self.n_pairs,
            "stopped": self.stopped,
            "groups": [g.to_json() for g in self.groups],
            "summary": self.summary(),
            "caveat": self.caveat,
            "top": self.rows()[:k],
        }


def _meaning(rel: float) -> str:
    if rel >= 1.0:
        return (
            "the bound is vacuous (no single node can move the metric by more than the whole "
            "gap), so it rules nothing out."
        )
    return (
        f"patched alone, no unverified node moves the metric by more than {rel:.1%} of what "
        "patching the whole input does."
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def draw_subsets(n_nodes: int, p: float, n_subsets: int, seed: int) -> Bool[Tensor, "s n"]:
    """Each node in each subset independently with probability ``p`` (seeded).

    Example:
        >>> draw_subsets(5, 0.5, 3, seed=0).shape
        torch.Size([3, 5])
    """
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_subsets, n_nodes, generator=g) < p


def balanced_subsets(
    n_subsets: int, n_nodes: int, p: float, generator: torch.Generator
) -> Bool[Tensor, "s n"]:
    """Random subsets in which every node is in exactly round(p·s) of the s subsets (at least
    2, and out of at least 2), independently across nodes.

    Each column is a random permutation, so for node n the other nodes' inclusion is
    independent of n's and ê(n) stays unbiased for additive effects; sampling each column
    without replacement only lowers the variance the Welch standard error assumes. No node
    is left with too few subsets to test, as plain Bernoulli draws often leave one of
    hundreds.

    Example:
        >>> m = balanced_subsets(8, 3, 0.25, torch.Generator().manual_seed(0))
        >>> m.sum(0).tolist()
        [2, 2, 2]
    """
    k = min(max(round(p * n_subsets), 2), n_subsets - 2)
    ranks = torch.rand(n_subsets, n_nodes, generator=generator).argsort(dim=0).argsort(dim=0)
    return ranks < k


def subset_effects(
    masks: Bool[Tensor, "s n"], effects: Float[Tensor, " s"]
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"], Float[Tensor, " n"]]:
    """ê(n) = mean I(S ∋ n) − mean I(S ∌ n), its Welch standard error and degrees of freedom.

    Example:
        >>> masks = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]]).bool()
        >>> est, se, df = subset_effects(masks, torch.tensor([2.0, 1.0, 3.0, 0.0]))
        >>> est.tolist()
        [2.0, 1.0]
    """
    m = masks.double()
    y = effects.double().view(-1, 1)
    n_in, n_out = m.sum(0), (1 - m).sum(0)
    mean_in = (m * y).sum(0) / n_in.clamp(min=1)
    mean_out = ((1 - m) * y).sum(0) / n_out.clamp(min=1)
    var_in = (m * (y - mean_in) ** 2).sum(0) / (n_in - 1).clamp(min=1)
    var_out = ((1 - m) * (y - mean_out) ** 2).sum(0) / (n_out - 1).clamp(min=1)
    a, b = var_in / n_in.clamp(min=1), var_out / n_out.clamp(min=1)
    se = (a + b).sqrt()
    df = (a + b) ** 2 / (a**2 / (n_in - 1).clamp(min=1) + b**2 / (n_out - 1).clamp(min=1))
    too_few = (n_in < 2) | (n_out < 2)
    se = torch.where(too_few, torch.full_like(se, math.inf), se)
    return mean_in - mean_out, se, torch.nan_to_num(df, nan=1.0).clamp(min=1.0)


def control_variate(
    masks: Bool[Tensor, "s n"], effects: Float[Tensor, " s"], screen: Float[Tensor, " n"]
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"], Float[Tensor, " n"], float]:
    """ĉ(n) = β Î(n) + ê_z(n) with z(S) = I(S) − β Σ_{m∈S} Î(m): the subsets estimate only
    the screen's error. Returns ĉ, its Welch standard error, degrees of freedom and β.

    β is the least-squares slope of I(S) on Σ_{m∈S} Î(m) (0 when that sum does not vary).

    Example:
        >>> masks = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]]).bool()
        >>> c = torch.tensor([2.0, -1.0])
        >>> est, se, df, beta = control_variate(masks, (masks.double() * c).sum(1), c)
        >>> est.tolist(), se.tolist(), beta
        ([2.0, -1.0], [0.0, 0.0], 1.0)
    """
    a = screen.double()
    total = masks.double() @ a
    y = effects.double()
    centred = total - total.mean()
    denom = float((centred * centred).sum())
    beta = float((centred * (y - y.mean())).sum()) / denom if denom > 0 else 0.0
    resid, se, df = subset_effects(masks, y - beta * total)
    return beta * a + resid, se, df, beta


def t_multipliers(
    df: Float[Tensor, " n"], alpha: float, correction: str = "paper"
) -> Float[Tensor, " n"]:
    """The t quantile each node's bound adds: t_{1−α}(ν) (``paper``, intersection–union) or
    t_{1−α/(2N)}(ν) (``bonferroni``, every node at once); df rounded down, one per value.

    Example:
        >>> df = torch.tensor([10.0, 10.5], dtype=torch.float64)
        >>> [round(x, 3) for x in t_multipliers(df, 0.05).tolist()]
        [1.812, 1.812]
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"expected a correction among {list(CORRECTIONS)} but got {correction!r}")
    n = max(len(df), 1)
    prob = 1.0 - alpha if correction == "paper" else 1.0 - alpha / (2 * n)
    whole = df.floor().clamp(min=1.0)
    table = {d: t_quantile(prob, d) for d in set(whole.tolist())}
    return torch.tensor([table[d] for d in whole.tolist()], dtype=torch.float64)


def upper_bounds(
    estimate: Float[Tensor, " n"],
    stderr: Float[Tensor, " n"],
    df: Float[Tensor, " n"],
    confidence: float,
    correction: str = "bonferroni",
) -> Float[Tensor, " n"]:
    """|ê(n)| + t·se(n), with t from :func:`t_multipliers` at α = 1 − confidence.

    Degrees of freedom are rounded down (a larger, safer quantile), one quantile per value.

    Example:
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> round(float(upper_bounds(one, one, 10 * one, 0.95)), 3)  # 1 + t_0.975(10)
        3.228
        >>> round(float(upper_bounds(one, one, 10 * one, 0.95, "paper")), 3)  # 1 + t_0.95(10)
        2.812
    """
    t = t_multipliers(df, 1.0 - confidence, correction)
    return estimate.abs() + torch.where(stderr > 0, t * stderr, torch.zeros_like(stderr))


def _needed_each(est: Tensor, se: Tensor, t: float, tau: float, m: int) -> Tensor:
    """Per node, the subsets m' at which its next bound should fall below τ; inf if never.

    With m' fresh subsets a node's bound is about |c| + (q + t)·se·√(m/m'), where |c| is
    taken as |ĉ| − se (for a node whose true effect is 0, |ĉ| itself shrinks as the subsets
    grow) and q = Φ⁻¹(1 − 1/(2N)) is how far the largest of the N nodes' noises reaches,
    since the group's bound is their maximum.

    Example:
        >>> _needed_each(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0]), 2.0, 1.0, 10).tolist()  # doctest: +ELLIPSIS
        [71.5..., inf]
    """
    q = _normal_quantile(1.0 - 0.5 / max(len(est), 1))
    room = tau - (est.abs() - se).clamp(min=0.0)
    need = m * ((q + t) * se / room.clamp(min=1e-300)) ** 2
    return torch.where((room > 0) & torch.isfinite(se), need, torch.full_like(need, math.inf))


def _normal_quantile(prob: float) -> float:
    """Φ⁻¹(prob) for 1/2 ≤ prob < 1.

    Example:
        >>> round(_normal_quantile(0.975), 3)
        1.96
    """
    return math.sqrt(2.0) * float(
        torch.special.erfinv(torch.tensor(2.0 * prob - 1.0, dtype=torch.float64))
    )


def _needed(est: Tensor, se: Tensor, t: float, tau: float, m: int) -> float:
    """The subsets every node's bound needs (the largest of :func:`_needed_each`)."""
    if len(est) == 0:
        return float(m)
    return float(_needed_each(est, se, t, tau, m).max())


def metric_gap(
    model: Any, pairs: PromptPairs, metric: str | Metric = "logit_diff", batch_size: int = 32
) -> float:
    """E L(clean) − E L(corrupt): what patching the whole input changes (2 forward passes per
    pair, 3 for a metric that reads the clean distribution). The unit bounds are reported in.

    Example:
        >>> metric_gap(model, pairs, "logit_diff")  # doctest: +SKIP
        12.71
    """
    pairs, m, opts = resolve(model, pairs, metric, batch_size)
    total = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        for batch in opts.batches(pairs):
            ref = clean_reference(model, batch, m)
            clean, _ = run_metric(model, batch.clean, batch, m, ref)
            corrupt, _ = run_metric(model, batch.corrupt, batch, m, ref)
            total += (clean.double() - corrupt.double()).sum().cpu()
    return float(opts.reduce(total)[0]) / len(pairs)


def diagnose(
    model: Any,
    pairs: PromptPairs,
    unverified: Sequence[Node],
    metric: str | Metric = "logit_diff",
    p: float = 0.25,
    n_subsets: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    mode: str = "noising",
    batch_size: int = 32,
    progress: Progress | None = None,
    *,
    screen: NodeScores | None = None,
    correction: str = "paper",
    gap: float | None = None,
    bound_target: float | None = None,
    max_together: int | None = 64,
) -> Diagnosis:
    """Bound the largest effect any unverified node can have, from random joint patches.

    Costs ``n_subsets`` + 2 forward passes per pair. With ``screen`` (the node scores that
    chose what to verify) its signed estimates are a control variate and the subsets only
    estimate the screen's error; ``gap`` (see :func:`metric_gap`) puts the bound in the gap's
    units, and ``bound_target`` (a fraction of the gap; the gap is then computed if not given,
    2 more passes) makes the summary say what a fresh draw would need to reach it. Every
    node is in the same number of subsets (:func:`balanced_subsets`), so none is left with
    too few to test. To draw
    until a target is reached or a budget spent, see
    :func:`circuitgraph.attribution.sequential.diagnose_until`.

    ``p`` is lowered so that about ``max_together`` nodes are patched together (but every
    node is still in about 8 subsets; None: p as given): joint patches of hundreds of nodes
    saturate the metric and shrink every estimate, which a tight bound then fails to cover.

    Example:
        >>> rest = [n for n in nodes if n not in verified]  # doctest: +SKIP
        >>> diagnose(model, pairs, rest, "logit_diff").bound  # doctest: +SKIP
    """
    _check(unverified, p, n_subsets, confidence)
    nodes = list(unverified)
    if max_together is not None:
        p = min(p, max(max_together / len(nodes), 8 / n_subsets))
    masks = balanced_subsets(n_subsets, len(nodes), p, torch.Generator().manual_seed(seed))
    sets = [[nodes[j] for j in row.nonzero().flatten().tolist()] for row in masks]
    effects = patch_sets(
        model, pairs, sets, metric, mode,  # type: ignore[arg-type]
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    beta = None
    if screen is not None:
        est, se, df, beta = control_variate(masks, effects, screen_effects(screen, nodes))
    else:
        est, se, df = subset_effects(masks, effects)
    upper = upper_bounds(est, se, df, confidence, correction)
    m = get_metric(metric)
    passes = n_subsets + 2.0 + float(m.needs_reference)
    if bound_target is not None and gap is None:
        gap = metric_gap(model, pairs, m, batch_size)
        passes += 2.0
    target = None if bound_target is None or gap is None else bound_target * abs(gap)
    return Diagnosis(
        tuple(nodes), est, se, upper, float(upper.max()), confidence, p, n_subsets, seed,
        m.name, len(pairs), forward_passes=passes, correction=correction, beta=beta, gap=gap,
        target=target,
    )  # fmt: skip


def screen_effects(screen: NodeScores, nodes: Sequence[Node]) -> Float[Tensor, " n"]:
    """The screen's signed estimates E Î of ``nodes`` (0 for nodes it did not score)."""
    out = torch.zeros(len(nodes), dtype=torch.float64)
    signed = screen.signed.double().cpu()
    for i, n in enumerate(nodes):
        try:
            out[i] = signed[screen.locate(n)]
        except ConfigError:
            continue  # not screened: no control variate for it
    return out


def _check(nodes: Sequence[Node], p: float, n_subsets: int, confidence: float) -> None:
    if not nodes:
        raise ConfigError("expected at least one unverified node to diagnose but got none")
    if not 0.0 < p < 1.0:
        raise ConfigError(f"expected a subset probability p strictly between 0 and 1 but got {p}")
    if n_subsets < 4:
        raise ConfigError(f"expected at least 4 random subsets but got {n_subsets}; use more")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"expected a confidence strictly between 0 and 1 but got {confidence}")


# --------------------------------------------------------------------------------------
# Student's t quantile (no SciPy): bisection on the tail via the incomplete beta function
# --------------------------------------------------------------------------------------


def t_quantile(prob: float, df: float) -> float:
    """The ``prob`` quantile (prob ≥ 0.5) of Student's t with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(0.975, 10), 3)
        2.228
    """
    tail = 1.0 - prob
    if tail >= 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while _t_tail(hi, df) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_tail(mid, df) > tail else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def _t_tail(t: float, df: float) -> float:
    """P(T > t) for t ≥ 0: ½ I_{df/(df+t²)}(df/2, ½)."""
    return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def _beta_cf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h
