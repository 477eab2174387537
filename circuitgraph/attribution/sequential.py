"""Diagnostics that draw subsets until the bound says something, and verification that stops.

Both run in rounds (:func:`run_rounds`). One round is one batched patching call:

1. exactly patch the nodes chosen for verification (one forward pass each);
2. patch a *fresh* batch of random subsets of the still-unverified nodes of every open group
   (a layer, or all nodes): one forward pass each;
3. estimate every unverified node's effect from that round's subsets, the screen as a control
   variate (:func:`~circuitgraph.attribution.diagnostics.control_variate`), and bound each
   group with AtP*'s intersection–union test at that group's share of α;
4. close every group whose bound falls below the threshold τ: the k-th largest exact effect
   verified so far, ``min_effect``, or the requested bound;
5. from what was seen, choose the nodes to verify next (those the bound cannot rule out and
   whose own estimate reaches τ/2) and how many subsets each open group needs (extrapolating
   its standard errors).

Why the claim holds at the stated confidence (for additive effects): a group's j-th test
uses only subsets drawn *after* everything it tests (its nodes, τ) was fixed, so conditional
on the past it is an ordinary intersection–union test at level α/2^j; the claim "no
unverified node reaches τ" is false only if the group holding the largest unverified node
closed wrongly at one of its tests, which happens with probability at most Σ_j α/2^j < α.
Older subsets steer the choices but never enter a test, so choosing what to verify from them
costs no correction. τ never decreases, so a closed group stays closed.

Cost is counted honestly: each call costs its sets plus the base and source runs (2, or 3
for a metric that reads the clean distribution), and a round that would cost more than
verifying every remaining node exactly does that instead.

Paired designs are not offered: for additive effects the difference of means has variance
Σ_{m≠n} c(m)² / n_subsets whatever p is, and pairing each subset with its complement doubles
it (the two halves' other-node terms are perfectly anti-correlated); a with/without pair
for one node costs 2 passes where exact patching costs 1. What lowers the variance is
removing the other nodes' contributions: the control variate, verification, and groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.attribution.diagnostics import (
    CORRECTIONS,
    Diagnosis,
    GroupBound,
    _needed,
    _needed_each,
    balanced_subsets,
    metric_gap,
    screen_effects,
    subset_effects,
    t_multipliers,
)
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.patching import patch_sets
from circuitgraph.run import Progress
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, get_metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = [
    "GROUPINGS",
    "Outcome",
    "Schedule",
    "balanced_subsets",
    "diagnose_until",
    "diagnosis_of",
    "group_keys",
    "node_evaluator",
    "run_rounds",
]

#: node sets (as indices) → their exact joint effects E I(S)
Evaluate = Callable[[list[list[int]]], Float[Tensor, " s"]]
#: how nodes are grouped for the diagnostic (or a function Node → key)
GROUPINGS: tuple[str, ...] = ("layer", "none")

# A group's test needs a few subsets to mean anything; below this a round draws none.
_MIN_SUBSETS = 8


@dataclass(frozen=True)
class Schedule:
    """How the rounds are drawn.

    ``first_subsets`` per open group in the first round; later rounds grow it by at most
    ``max_growth`` (extrapolated from the standard errors seen). ``p`` is the largest share
    of a group's nodes patched together: a round patches at most about ``max_together``
    nodes at once (p = max_together / nodes), drawing enough subsets that every node is in
    at least 8, because joint patches of hundreds of nodes saturate the metric and shrink
    every node's estimated effect (zoo:gpt2-4l IOI, 1350 per-position nodes: the subsets'
    effects grow only 0.67x as fast as the sum of their nodes' exact effects at 340 nodes
    together, 0.94-0.98x at 27).

    Example:
        >>> Schedule(confidence=0.9).alpha
        0.09999999999999998
    """

    confidence: float = 0.95
    p: float = 0.25
    first_subsets: int = 32
    max_growth: float = 4.0
    max_together: int = 64
    correction: str = "paper"
    seed: int = 0

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    def check(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(
                f"expected a confidence strictly between 0 and 1 but got {self.confidence}"
            )
        if not 0.0 < self.p < 1.0:
            raise ConfigError(
                f"expected a subset probability p strictly between 0 and 1 but got {self.p}"
            )
        if self.first_subsets < _MIN_SUBSETS:
            raise ConfigError(
                f"expected at least {_MIN_SUBSETS} subsets per group in the first round but got "
                f"{self.first_subsets}"
            )
        if self.correction not in CORRECTIONS:
            raise ConfigError(
                f"expected a correction among {list(CORRECTIONS)} but got {self.correction!r}"
            )


@dataclass
class _Group:
    key: str
    members: list[int]
    next_subsets: int
    tests: int = 0
    subsets: int = 0
    last: int = 0
    p: float = 0.25
    var_z: float = 0.0
    bound: float = math.inf
    alpha: float = 0.0
    threshold: float = math.nan
    closed: bool = False
    blocked: bool = False

    def report(self, n_open: int) -> GroupBound:
        return GroupBound(
            self.key, n_open, self.subsets, self.tests, self.bound, self.alpha, self.threshold,
            self.closed, self.p,
        )  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What the rounds found.

    ``verified`` lists (node index, exact effect) in the order verified; ``estimate``,
    ``stderr`` and ``upper`` hold each unverified node's last test (NaN for verified nodes);
    ``bound`` is the largest of the groups' last bounds (0 when every node was verified).
    ``stopped``: ``bounded`` (every group closed), ``exhausted`` (every node verified),
    ``budget`` or ``blocked`` (some node is itself estimated above τ and verification is off).
    """

    verified: tuple[tuple[int, float], ...]
    estimate: Float[Tensor, " n"]
    stderr: Float[Tensor, " n"]
    upper: Float[Tensor, " n"]
    bound: float
    threshold: float
    groups: tuple[GroupBound, ...]
    passes: float
    rounds: int
    subsets: int
    beta: float | None
    stopped: str
    needed_passes: float | None
    must_verify: tuple[int, ...]
    history: tuple[dict[str, float], ...] = field(default_factory=tuple)

    @property
    def unverified(self) -> list[int]:
        done = {i for i, _ in self.verified}
        return [i for i in range(len(self.estimate)) if i not in done]


def run_rounds(
    evaluate: Evaluate,
    n_nodes: int,
    *,
    screen: Float[Tensor, " n"] | None,
    group_of: Sequence[str],
    first: Sequence[int],
    threshold: Callable[[list[float]], float],
    verify: bool,
    budget: float,
    overhead: float,
    schedule: Schedule = Schedule(),
) -> Outcome:
    """Verify and bound in rounds until no unverified node can reach ``threshold``.

    ``evaluate(sets)`` returns the exact joint effect of each set of node indices (one
    batched call per round, costing ``len(sets) + overhead`` forward passes per pair);
    ``screen`` holds the screen's signed estimates (the control variate; None for plain
    subsampling); ``first`` the nodes verified in the first round; ``threshold`` maps the
    exact effects verified so far to τ. With ``verify`` off nothing is verified and the
    rounds only tighten the bound.

    Example (an additive "model" whose node 3 the screen cannot see):
        >>> c = torch.tensor([5.0, 1.0, 0.5, 4.0] + [0.0] * 196, dtype=torch.float64)
        >>> screen = c.clone(); screen[3] = 0.0
        >>> ev = lambda sets: torch.stack([c[s].sum() for s in sets])
        >>> second = lambda v: sorted(map(abs, v))[-2] if len(v) > 1 else 0.0
        >>> out = run_rounds(ev, 200, screen=screen, group_of=["all"] * 200, first=[0, 1],
        ...                  threshold=second, verify=True, budget=202, overhead=2)
        >>> out.stopped, 3 in dict(out.verified), out.passes < 202
        ('bounded', True, True)
    """
    schedule.check()
    if len(group_of) != n_nodes:
        raise ConfigError(f"expected one group per node ({n_nodes}) but got {len(group_of)}")
    a = (
        torch.zeros(n_nodes, dtype=torch.float64)
        if screen is None
        else screen.double().cpu().flatten()
    )
    run = _Rounds(evaluate, n_nodes, a, screen is not None, list(group_of), threshold, verify,
                  budget, overhead, schedule)  # fmt: skip
    return run.go(list(dict.fromkeys(first)))


class _Rounds:
    """The state of :func:`run_rounds` (one instance per call)."""

    def __init__(
        self,
        evaluate: Evaluate,
        n: int,
        a: Tensor,
        use_screen: bool,
        group_of: list[str],
        threshold: Callable[[list[float]], float],
        verify: bool,
        budget: float,
        overhead: float,
        s: Schedule,
    ) -> None:
        self.evaluate, self.n, self.a, self.use_screen = evaluate, n, a, use_screen
        self.threshold, self.verify, self.budget, self.overhead, self.s = (
            threshold, verify, budget, overhead, s,
        )  # fmt: skip
        keys = list(dict.fromkeys(group_of))
        self.groups = [
            _Group(k, [i for i in range(n) if group_of[i] == k], s.first_subsets) for k in keys
        ]
        self.exact: dict[int, float] = {}
        self.est = torch.full((n,), math.nan, dtype=torch.float64)
        self.se = torch.full((n,), math.nan, dtype=torch.float64)
        self.upper = torch.full((n,), math.inf, dtype=torch.float64)
        self.resid = torch.zeros(n, dtype=torch.float64)
        self.rng = torch.Generator().manual_seed(s.seed)
        self.spent = 0.0
        self.rounds = 0
        self.subsets = 0
        self.beta: float | None = None
        self.tau = 0.0
        self.must_verify: list[int] = []
        self.history: list[dict[str, float]] = []

    # -- the loop ------------------------------------------------------------------------

    def go(self, pending: list[int]) -> Outcome:
        stopped = ""
        while True:
            plan, pending, last = self._plan(pending)
            if not pending and not plan:
                stopped = "budget"
                break
            self._round(pending, plan)
            pending = []
            left = self._unverified()
            if not left:
                stopped = "exhausted"
                break
            live = [g for g in self.groups if self._members(g, left) and not g.closed]
            if not live:
                stopped = "bounded"
                break
            if last:
                stopped = "budget"
                break
            pending = self._next(live, left)
            if not pending and all(g.blocked for g in live):
                stopped = "blocked"
                break
        return self._outcome(stopped)

    def _plan(self, pending: list[int]) -> tuple[dict[str, int], list[int], bool]:
        """Subsets per open group this round; the nodes to verify; whether it is the last."""
        left = [i for i in self._unverified() if i not in set(pending)]
        groups = [g for g in self.groups if self._members(g, left) and not g.closed]
        groups = [g for g in groups if not g.blocked]
        plan = {g.key: _enough(g.next_subsets, self.s, len(self._members(g, left))) for g in groups}
        in_open = [i for g in groups for i in self._members(g, left)]
        all_cost = self.spent + len(pending) + len(in_open) + self.overhead
        if (
            self.verify
            and in_open
            and len(in_open) <= 2 * sum(plan.values())
            and all_cost <= self.budget
        ):
            # Verifying every remaining node exactly costs at most twice this round's test
            # (which may fail): verify them all and be sure.
            pending = pending + sorted(in_open, key=lambda i: -abs(float(self.a[i])))
            plan = {}
        room = self.budget - self.spent - self.overhead - len(pending)
        if sum(plan.values()) <= room:
            return plan, pending, False
        if plan and room >= _MIN_SUBSETS * len(plan):
            scale = room / sum(plan.values())
            return {k: max(_MIN_SUBSETS, int(m * scale)) for k, m in plan.items()}, pending, True
        if self.verify and self.budget - self.spent - self.overhead >= 1:
            # Spend what is left on the most likely misses, in the order they were chosen.
            fit = int(self.budget - self.spent - self.overhead)
            return {}, pending[:fit], True
        return {}, [], True

    def _round(self, pending: list[int], plan: dict[str, int]) -> None:
        left = [i for i in self._unverified() if i not in set(pending)]
        draws: list[tuple[_Group, list[int], Tensor]] = []
        for g in self.groups:
            if g.key not in plan:
                continue
            idx = self._members(g, left)
            g.p = _share(self.s.p, self.s.max_together, len(idx), plan[g.key])
            masks = balanced_subsets(plan[g.key], len(idx), g.p, self.rng)
            draws.append((g, idx, masks))
        sets = [[i] for i in pending]
        sets += [
            [idx[j] for j in row.nonzero().flatten().tolist()] for _, idx, m in draws for row in m
        ]
        y = self.evaluate(sets).double().cpu()
        self.spent += len(sets) + self.overhead
        self.rounds += 1
        for j, i in enumerate(pending):
            self.exact[i] = float(y[j])
        self.tau = float(self.threshold(list(self.exact.values())))
        rows = y[len(pending) :]
        if draws:
            self._test(draws, rows)
        self.history.append({
            "round": float(self.rounds), "passes": self.spent, "verified": float(len(self.exact)),
            "subsets": float(sum(m.shape[0] for _, _, m in draws)), "threshold": self.tau,
            "bound": self._bound(),
        })  # fmt: skip

    def _test(self, draws: list[tuple[_Group, list[int], Tensor]], rows: Tensor) -> None:
        """Estimate, bound and maybe close each drawn group from this round's subsets only."""
        totals = [(m.double() @ self.a[idx]) for _, idx, m in draws]
        y_parts = list(rows.split([m.shape[0] for _, _, m in draws]))
        beta = _pooled_slope(torch.cat(totals), torch.cat(y_parts)) if self.use_screen else 0.0
        self.beta = beta if self.use_screen else None
        for (g, idx, masks), total, y in zip(draws, totals, y_parts, strict=True):
            z = y - beta * total
            resid, se, df = subset_effects(masks, z)
            g.var_z = float(z.var()) if len(z) > 1 else 0.0
            est = beta * self.a[idx] + resid
            g.tests += 1
            g.subsets += masks.shape[0]
            g.last = masks.shape[0]
            self.subsets += masks.shape[0]
            g.alpha = self.s.alpha / 2**g.tests
            t = t_multipliers(df, g.alpha, self.s.correction)
            up = est.abs() + torch.where(se > 0, t * se, torch.zeros_like(se))
            where = torch.tensor(idx, dtype=torch.long)
            self.est[where], self.se[where], self.upper[where] = est, se, up
            self.resid[where] = resid
            g.bound, g.threshold = float(up.max()), self.tau
            g.closed = g.bound < self.tau

    def _next(self, live: list[_Group], left: list[int]) -> list[int]:
        """Nodes to verify next, and each open group's next number of subsets.

        Each node needs some number of fresh subsets before its bound can fall below τ
        (extrapolating its standard error; without end when its estimate itself reaches τ).
        Verifying a node costs one pass and removes its need. The group verifies the nodes
        of endless need first (they often carry the variance that keeps the others up),
        then, with the others' standard errors as they will be without those, the v
        neediest for the v that minimises v + (what the rest need): nodes that sit too close
        to τ to be worth sampling for. The group then draws what its remaining nodes need (between as many subsets
        as before and ``max_growth`` times more).
        """
        chosen: list[int] = []
        for g in live:
            idx = self._members(g, left)
            t_next = self._t_next(g, idx)
            m = max(g.last, _MIN_SUBSETS)
            take: list[int] = []
            if self.verify:
                # First the nodes no number of subsets can clear (estimated at τ or above):
                # often they are also what inflates everyone else's standard error.
                need = _needed_each(self.est[idx], self.se[idx], t_next, self.tau, m)
                take = [i for i, x in zip(idx, need.tolist(), strict=True) if math.isinf(x)]
                rest = [i for i in idx if i not in set(take)]
                se, tau = self._after(g, rest, take)
                need = _needed_each(self.est[rest], se, t_next, tau, m)
                take += _neediest(rest, need, m, int(self.s.max_growth * m))
                chosen += take
            stay = [i for i in idx if i not in set(take)]
            # "Surely above τ" must hold for every node listed at once (Bonferroni).
            t_sure = self._t(g, len(stay), "bonferroni")
            sure = [
                i for i in stay if abs(float(self.est[i])) - t_sure * float(self.se[i]) >= self.tau
            ]
            if sure and not self.verify:
                # Sampling cannot rule out a node that is itself surely above τ.
                g.blocked = True
                self.must_verify += [i for i in sure if i not in self.must_verify]
                continue
            g.next_subsets = self._grow(g, stay, take, t_next, self.s.max_growth)
        return chosen

    # -- helpers -------------------------------------------------------------------------

    def _after(self, g: _Group, stay: list[int], take: list[int]) -> tuple[Tensor, float]:
        """The staying nodes' standard errors and τ once ``take`` is verified (predicted).

        Verifying a node removes its residual c − βÎ from every subset: the variance of z
        drops by about p(1−p)·(r̂² − se²) per verified node, and the standard errors with it;
        τ may rise with the nodes verified (about their estimates).
        """
        se = self.se[stay]
        if take and g.var_z > 0:
            r2 = (self.resid[take] ** 2 - self.se[take] ** 2).clamp(min=0.0).sum()
            removed = g.p * (1 - g.p) * float(r2)
            se = se * math.sqrt(max(1.0 - removed / g.var_z, 0.05))
        tau = self.threshold([*self.exact.values(), *(float(self.est[i]) for i in take)])
        return se, max(tau, self.tau)

    def _grow(self, g: _Group, stay: list[int], take: list[int], t_next: float, cap: float) -> int:
        """Subsets that would bring every staying node's bound below τ (extrapolated)."""
        m = max(g.last, _MIN_SUBSETS)
        se, tau = self._after(g, stay, take)
        need = _needed(self.est[stay], se, t_next, tau, m)
        return int(min(max(need, m), cap * m))

    def _t_next(self, g: _Group, stay: list[int]) -> float:
        """The t quantile the group's next test will use."""
        return self._t(g, len(stay), self.s.correction) if stay else 0.0

    def _t(self, g: _Group, n: int, correction: str) -> float:
        # Welch's degrees of freedom are about the smaller side's size minus one.
        df = torch.full((max(n, 1),), max(g.p * g.next_subsets - 1, 1.0), dtype=torch.float64)
        return float(t_multipliers(df, self.s.alpha / 2 ** (g.tests + 1), correction)[0])

    def _members(self, g: _Group, left: list[int]) -> list[int]:
        keep = set(left)
        return [i for i in g.members if i in keep]

    def _unverified(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.exact]

    def _bound(self) -> float:
        left = self._unverified()
        if not left:
            return 0.0
        return float(self.upper[torch.tensor(left, dtype=torch.long)].max())

    def _needed_passes(self, left: list[int]) -> float | None:
        """Passes per pair (in all) that would close every open group, if sampling can."""
        if self.must_verify:
            return None
        more = 0
        for g in self.groups:
            idx = self._members(g, left)
            if not idx or g.closed:
                continue
            t_next = self._t_next(g, idx)
            need = _needed(self.est[idx], self.se[idx], t_next, self.tau, max(g.last, 1))
            if not math.isfinite(need):
                return None
            more += int(need)
        return self.spent + more + self.overhead if more else None

    def _outcome(self, stopped: str) -> Outcome:
        left = self._unverified()
        reports = tuple(g.report(len(self._members(g, left))) for g in self.groups if g.tests)
        return Outcome(
            tuple(self.exact.items()), self.est.clone(), self.se.clone(), self.upper.clone(),
            self._bound(), self.tau, reports, self.spent, self.rounds, self.subsets, self.beta,
            stopped, None if stopped in ("bounded", "exhausted") else self._needed_passes(left),
            tuple(self.must_verify), tuple(self.history),
        )  # fmt: skip


#: every node is in at least this many of a round's subsets (and out of as many)
_MIN_IN = 8


def _enough(m: int, s: Schedule, n: int) -> int:
    """Subsets for a group of ``n`` nodes: at least ``m``, and enough that with about
    ``max_together`` nodes per subset every node is in ``_MIN_IN`` of them.

    Example:
        >>> _enough(32, Schedule(), 1350), _enough(32, Schedule(), 100)
        (169, 32)
    """
    p = min(s.p, s.max_together / max(n, 1))
    return max(m, math.ceil(_MIN_IN / p))


def _share(p: float, together: int, n: int, m: int) -> float:
    """The share of a group's n nodes in each of m subsets: at most p and about ``together``
    nodes per subset, but every node in at least ``_MIN_IN`` subsets.

    Example:
        >>> round(_share(0.25, 64, 1350, 200), 4), _share(0.25, 64, 1350, 64)
        (0.0474, 0.125)
    """
    return min(max(min(p, together / max(n, 1)), _MIN_IN / max(m, 1)), 0.5)


def _pooled_slope(x: Tensor, y: Tensor) -> float:
    """Least-squares slope of y on x (0 when x does not vary)."""
    xc = x - x.mean()
    denom = float((xc * xc).sum())
    return float((xc * (y - y.mean())).sum()) / denom if denom > 0 else 0.0


def _neediest(idx: list[int], need: Tensor, m: int, cap: int) -> list[int]:
    """The v nodes of largest need, v minimising v + max(need of the rest, m) (v ≤ cap).

    Example:
        >>> _neediest([7, 8, 9], torch.tensor([1e9, 50.0, 30.0]), 32, 100)  # 2 + 32 < 1 + 50
        [7, 8]
    """
    order = sorted(range(len(idx)), key=lambda j: -float(need[j]))
    needs = [float(need[j]) for j in order] + [0.0]
    best = min(range(min(len(order), cap) + 1), key=lambda v: v + max(needs[v], m))
    return [idx[j] for j in order[:best]]


# --------------------------------------------------------------------------------------
# Model-facing wrappers
# --------------------------------------------------------------------------------------


def group_keys(nodes: Sequence[Node], groups: str | Callable[[Node], str]) -> list[str]:
    """Each node's group: its layer (``layer``), one group (``none``), or ``groups(node)``.

    Example:
        >>> group_keys([Node("head", 0, 1), Node("mlp", 2)], "layer")
        ['L0', 'L2']
    """
    if callable(groups):
        return [str(groups(n)) for n in nodes]
    if groups == "layer":
        return [f"L{n.layer}" for n in nodes]
    if groups == "none":
        return ["all"] * len(nodes)
    raise ConfigError(f"expected groups among {list(GROUPINGS)} (or a function) but got {groups!r}")


def node_evaluator(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: str | Metric,
    mode: str,
    batch_size: int,
    progress: Progress | None,
) -> Evaluate:
    """``evaluate(sets)`` over ``nodes`` by exact joint patching (one forward per set)."""

    def evaluate(sets: list[list[int]]) -> Tensor:
        return patch_sets(
            model, pairs, [[nodes[i] for i in s] for s in sets], metric, mode,  # type: ignore[arg-type]
            batch_size=batch_size, progress=progress,
        )  # fmt: skip

    return evaluate


def overhead_passes(metric: str | Metric) -> float:
    """Forward passes per pair each patching call adds: the base and source runs (and the
    clean reference run for metrics that compare with it)."""
    return 2.0 + float(get_metric(metric).needs_reference)


def diagnose_until(
    model: Any,
    pairs: PromptPairs,
    unverified: Sequence[Node],
    metric: str | Metric = "logit_diff",
    *,
    screen: NodeScores | None = None,
    bound_target: float = 0.1,
    gap: float | None = None,
    budget: float | None = None,
    groups: str | Callable[[Node], str] = "layer",
    confidence: float = 0.95,
    p: float = 0.25,
    first_subsets: int = 32,
    correction: str = "paper",
    seed: int = 0,
    mode: str = "noising",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Diagnosis:
    """Draw subsets in rounds until the bound falls below ``bound_target`` × |gap| or the
    budget (forward passes per pair; default: the exhaustive sweep of these nodes) runs out.

    Nothing is verified: a node whose own estimate is surely above the target stops its
    group, and the diagnosis lists it under ``must_verify``. ``gap`` is computed (2 forward
    passes per pair, counted) when not given.

    Example:
        >>> d = diagnose_until(model, pairs, rest, screen=scores, bound_target=0.1)  # doctest: +SKIP
        >>> d.relative_bound <= 0.1 or d.advice()  # doctest: +SKIP
    """
    nodes = list(unverified)
    if not nodes:
        raise ConfigError("expected at least one unverified node to diagnose but got none")
    if bound_target <= 0:
        raise ConfigError(
            f"expected a positive bound target (a fraction of the gap) but got {bound_target}"
        )
    m = get_metric(metric)
    spent = 0.0
    if gap is None:
        gap = metric_gap(model, pairs, m, batch_size)
        spent = 2.0
    target = bound_target * abs(gap)
    over = overhead_passes(m)
    limit = (len(nodes) + over if budget is None else budget) - spent
    out = run_rounds(
        node_evaluator(model, pairs, nodes, m, mode, batch_size, progress), len(nodes),
        screen=None if screen is None else screen_effects(screen, nodes),
        group_of=group_keys(nodes, groups), first=[], threshold=lambda _: target, verify=False,
        budget=limit, overhead=over,
        schedule=Schedule(confidence, p, first_subsets, correction=correction, seed=seed),
    )  # fmt: skip
    return diagnosis_of(
        out, nodes, m, pairs, gap, target, spent, budget, p, seed, confidence, correction
    )


def diagnosis_of(
    out: Outcome,
    nodes: Sequence[Node],
    metric: Metric,
    pairs: PromptPairs,
    gap: float | None,
    target: float | None,
    spent: float,
    budget: float | None,
    p: float,
    seed: int,
    confidence: float,
    correction: str,
) -> Diagnosis:
    """A :class:`Diagnosis` over the nodes ``out`` left unverified."""
    rest = out.unverified
    idx = torch.tensor(rest, dtype=torch.long)
    needed = None if out.needed_passes is None else out.needed_passes + spent
    return Diagnosis(
        tuple(nodes[i] for i in rest), out.estimate[idx], out.stderr[idx], out.upper[idx],
        out.bound, confidence, p, out.subsets, seed, metric.name, len(pairs),
        forward_passes=out.passes + spent, correction=correction, beta=out.beta, gap=gap,
        target=target, budget=budget, groups=out.groups, needed_passes=needed,
        must_verify=tuple(nodes[i] for i in out.must_verify), stopped=out.stopped,
        meta={"rounds": out.rounds, "history": list(out.history)},
    )  # fmt: skip
