"""Random-subset diagnostics: a bound on what the screen may have missed (DESIGN §2).

After the top nodes are verified exactly, draw random subsets S of the unverified nodes
(each node in S independently with probability p), patch each subset jointly in one
forward pass, and estimate each node's effect as

    ê(n) = mean{I(S) : n ∈ S} − mean{I(S) : n ∉ S}.

For additive effects ê(n) is unbiased; Welch's t-statistic with a Bonferroni correction
over the nodes turns it into an upper confidence bound on max_n |c(n)|, the largest effect
any unverified node can have. Interactions between nodes are attributed to them on
average, so the bound is exact only for additive effects; every report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.patching import patch_sets
from circuitgraph.run import Progress
from circuitgraph.tasks.metrics import Metric, get_metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.text import plural

__all__ = ["CAVEAT", "Diagnosis", "diagnose", "draw_subsets", "subset_effects", "t_quantile"]

CAVEAT = (
    "The bound is exact only for additive effects: interactions between nodes are "
    "averaged into the per-node estimates, so strongly interacting nodes can exceed it."
)


@dataclass(frozen=True)
class Diagnosis:
    """The false-negative bound and the per-node estimates behind it.

    ``bound`` is an upper confidence bound (at ``confidence``) on the largest |effect| of
    any node in ``nodes``; ``upper`` holds each node's own bound, ``estimate`` and
    ``stderr`` the subset estimate ê(n) and its standard error.

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
        return (
            f"With {self.confidence:.0%} confidence no unverified node ({len(self.nodes)}) has "
            f"|effect| above {self.bound:.4g} ({self.metric}; "
            f"{plural(self.n_subsets, 'random subset')}, p={self.p}, "
            f"{plural(float(self.forward_passes), 'forward pass', 'forward passes')} per pair). "
            f"{self.caveat}"
        )

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


def draw_subsets(n_nodes: int, p: float, n_subsets: int, seed: int) -> Bool[Tensor, "s n"]:
    """Each node in each subset independently with probability ``p`` (seeded).

    Example:
        >>> draw_subsets(5, 0.5, 3, seed=0).shape
        torch.Size([3, 5])
    """
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_subsets, n_nodes, generator=g) < p


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


def upper_bounds(
    estimate: Float[Tensor, " n"],
    stderr: Float[Tensor, " n"],
    df: Float[Tensor, " n"],
    confidence: float,
) -> Float[Tensor, " n"]:
    """|ê(n)| + t_{1−α/(2N)}(df_n)·se(n): jointly valid for all N nodes (Bonferroni).

    Degrees of freedom are rounded down (a larger, safer quantile), one quantile per value.

    Example:
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> round(float(upper_bounds(one, one, 10 * one, 0.95)), 3)  # 1 + t_0.975(10)
        3.228
    """
    prob = 1.0 - (1.0 - confidence) / (2 * len(estimate))
    whole = df.floor().clamp(min=1.0)
    table = {d: t_quantile(prob, d) for d in set(whole.tolist())}
    t = torch.tensor([table[d] for d in whole.tolist()], dtype=torch.float64)
    return estimate.abs() + torch.where(stderr > 0, t * stderr, torch.zeros_like(stderr))


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
) -> Diagnosis:
    """Bound the largest effect any unverified node can have, from random joint patches.

    Costs ``n_subsets`` + 2 forward passes per pair.

    Example:
        >>> rest = [n for n in nodes if n not in verified]  # doctest: +SKIP
        >>> diagnose(model, pairs, rest, "logit_diff").bound  # doctest: +SKIP
    """
    _check(unverified, p, n_subsets, confidence)
    nodes = list(unverified)
    masks = draw_subsets(len(nodes), p, n_subsets, seed)
    sets = [[nodes[j] for j in row.nonzero().flatten().tolist()] for row in masks]
    effects = patch_sets(
        model, pairs, sets, metric, mode,  # type: ignore[arg-type]
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    est, se, df = subset_effects(masks, effects)
    upper = upper_bounds(est, se, df, confidence)
    m = get_metric(metric)
    return Diagnosis(
        tuple(nodes), est, se, upper, float(upper.max()), confidence, p, n_subsets, seed,
        m.name, len(pairs), forward_passes=n_subsets + 2.0 + float(m.needs_reference),
    )  # fmt: skip


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
