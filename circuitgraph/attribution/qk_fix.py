"""The QK fix of AtP*: do not linearise query and key nodes through the softmax (DESIGN §2).

Recompute the attention probabilities exactly with the node patched and linearise only
downstream of them, Î = Σ_ts (A'_ts − A_ts) ∂L/∂A_ts:

* query at position t: A'_t· = softmax_s(s_t· + Δq_t·k_s), one row changes;
* key at position s: only column s changes, by Δ_ts = q_t·Δk_s, so
  A'_ts = σ(logit A_ts + Δ_ts), A'_tj = A_tj (1 − A'_ts)/(1 − A_ts) for j ≠ s, and
  Î = Σ_t r_ts [(1 − A_ts) g_ts − Σ_{j≠s} A_tj g_tj] with r_ts = 1 − (1 − A'_ts)/(1 − A_ts)
  (O(T²·d) per head for all positions);
* a head-level query or key: all rows (columns) patched at once, the pattern recomputed.

Keys are handled in log space: 1 − A of a row's largest entry comes from the other entries
(log-sum-exp), never by subtracting A from 1, so saturated attention (A > 0.999) keeps its
precision; query and whole-key changes are read against the row's top entry (ΣΔA = 0).
Scores include the attention scale the model really uses, measured once per model and
layer (least squares of hook_attn_scores on q·k) and checked, so soft-capped or biased
attention is refused rather than mis-scored. With rotary
embeddings q and k are read after rotation (rotation depends only on position, so the
rotated patched q is the patched rotated q); in grouped-query attention a key head's
effect sums over the query heads that read it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitgraph.arch import hooks, qk_hooks
from circuitgraph.attribution.sites import Site
from circuitgraph.errors import ModelStateError
from circuitgraph.model import ModelInfo
from circuitgraph.run import BatchRun

__all__ = [
    "LayerPatterns",
    "QKFix",
    "fit_scale",
    "key_effects",
    "key_whole_effects",
    "prepare_layer",
    "query_effects",
]

NEG_INF = float("-inf")
#: pairs of the first batch on which the attention scale is measured and checked
CHECK_PAIRS = 4
#: measured scales per model and layer (an architectural constant: measured once)
_SCALES: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------------------
# Pure tensor functions (the equations)
# --------------------------------------------------------------------------------------


def causal(t: int, device: torch.device) -> Bool[Tensor, "t s"]:
    """Query t may read key s ≤ t.

    Example:
        >>> causal(2, torch.device("cpu")).tolist()
        [[True, False], [True, True]]
    """
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def readable(scores: Float[Tensor, "b h t s"]) -> Bool[Tensor, "b h t s"]:
    """Keys a query may read: causal, and not masked by the model itself (sliding windows)."""
    return causal(scores.shape[-1], scores.device) & (scores > torch.finfo(scores.dtype).min / 2)


def qk_dot(q: Float[Tensor, "b t h d"], k: Float[Tensor, "b s g d"]) -> Float[Tensor, "b h t s"]:
    """q_t·k_s for every query head; query head h reads KV head h // (h/g)."""
    b, t, h, d = q.shape
    g = k.shape[2]
    grouped = q.reshape(b, t, g, h // g, d)
    return torch.einsum("btgrd,bsgd->bgrts", grouped, k).reshape(b, h, t, k.shape[1])


def per_kv_head(x: Float[Tensor, "b h ..."], n_kv: int) -> Float[Tensor, "b g ..."]:
    """Sum over the query heads that read each KV head.

    Example:
        >>> per_kv_head(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 2).tolist()
        [[3.0, 7.0]]
    """
    return x.reshape(x.shape[0], n_kv, x.shape[1] // n_kv, *x.shape[2:]).sum(2)


def fit_scale(
    scores: Float[Tensor, "b h t s"],
    q: Float[Tensor, "b t h d"],
    k: Float[Tensor, "b s g d"],
    pattern: Float[Tensor, "b h t s"],
    layer: int,
) -> float | None:
    """The attention scale c with scores = c·q·k (+ mask), checked against the model.

    Fitted on the entries the model lets a query read (causal, and not masked by the model
    itself, e.g. a sliding window); None when q·k vanishes there (nothing to measure).
    Raises a :class:`ModelStateError` when the scores are not c·q·k (soft-capping, additive
    position biases, attention sinks): the QK fix would then be wrong.
    """
    work = torch.promote_types(scores.dtype, torch.float32)
    s = scores.to(work)
    allowed = readable(scores)
    # Softmax ignores a constant added to a row, so fit within rows (centred): the same
    # scale comes out of raw scores and of log-probabilities (see ``layer_scores``).
    x, y = _row_centred(qk_dot(q.to(work), k.to(work)), allowed), _row_centred(s, allowed)
    if float((x * x).sum()) == 0.0:
        return None
    scale = float((x * y).sum() / (x * x).sum())
    tol = _tolerance(scores.dtype)
    bad_scores = float((scale * x - y).abs().max()) > tol * (1.0 + float(y.abs().max()))
    recomputed = s.masked_fill(~allowed, NEG_INF).softmax(-1)
    bad_pattern = float((recomputed - pattern.to(work)).abs().max()) > tol
    if bad_scores or bad_pattern:
        raise ModelStateError(
            f"the QK fix expects layer {layer}'s attention scores to be scale·q·k plus a causal "
            "mask, but this model's attention differs (soft-capping, position bias or sinks?); "
            "use method 'atp' or 'atp+graddrop' for it"
        )
    return scale


def _row_centred(x: Tensor, allowed: Tensor) -> Tensor:
    """The readable entries of x minus their row mean, flattened."""
    n = allowed.sum(-1, keepdim=True).clamp(min=1)
    mean = x.masked_fill(~allowed, 0.0).sum(-1, keepdim=True) / n
    return (x - mean)[allowed]


def layer_scores(
    scores: Float[Tensor, "b h t s"], pattern: Float[Tensor, "b h t s"]
) -> Float[Tensor, "b h t s"]:
    """Pre-softmax scores, up to a constant per row (which softmax ignores).

    TL-native bridges report the pattern at ``hook_attn_scores``; log-probabilities then
    stand in for the scores (masked entries become −inf, as they should).
    """
    if scores.shape == pattern.shape and torch.equal(scores, pattern):
        return pattern.clamp(min=0).log()
    return scores


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if torch.finfo(dtype).bits >= 32 else 5e-2


@dataclass(frozen=True)
class KeyRatios:
    """What per-position keys need: r_ts, 1 − A (from log space) and each row's top entry."""

    r: Float[Tensor, "b h t s"]
    one_minus_a: Float[Tensor, "b h t s"]
    is_top: Bool[Tensor, "b h t s"]


@dataclass(frozen=True)
class LayerPatterns:
    """One layer's clean pattern A and its exact changes under q/k patches.

    ``dq``: ΔA with each query patched (rows are independent, so one tensor serves every
    query position); ``dk``: ΔA with all keys patched; ``keys``: per-position key ratios.
    """

    a: Float[Tensor, "b h t s"]
    top: Tensor  # [b, h, t, 1] long: each row's largest entry
    dq: Float[Tensor, "b h t s"] | None
    dk: Float[Tensor, "b h t s"] | None
    keys: KeyRatios | None


def prepare_layer(
    scores: Float[Tensor, "b h t s"],
    q_clean: Float[Tensor, "b t h d"],
    q_noise: Float[Tensor, "b t h d"],
    k_clean: Float[Tensor, "b s g d"],
    k_noise: Float[Tensor, "b s g d"],
    scale: float,
    needs: frozenset[str],
) -> LayerPatterns:
    """Everything the effects need that does not depend on the gradient.

    ``needs`` holds any of ``q``, ``k_pos`` (per-position keys), ``k_all`` (whole keys).
    """
    work = torch.promote_types(scores.dtype, torch.float32)
    allowed = readable(scores)
    s = scores.to(work).masked_fill(~allowed, NEG_INF)
    a, top = s.softmax(-1), s.argmax(-1, keepdim=True)
    dq = dk = keys = None
    if "q" in needs:
        dq = shifted_change(s, a, scale * qk_dot(_d(q_noise, q_clean, work), k_clean.to(work)))
    if needs & {"k_pos", "k_all"}:
        delta = scale * qk_dot(q_clean.to(work), _d(k_noise, k_clean, work))
        delta = delta.masked_fill(~allowed, 0.0)
        if "k_all" in needs:
            dk = shifted_change(s, a, delta)
        if "k_pos" in needs:
            keys = key_ratios(s, top, delta)
    return LayerPatterns(a, top, dq, dk, keys)


def key_ratios(
    s: Float[Tensor, "b h t s"], top: Tensor, delta: Float[Tensor, "b h t s"]
) -> KeyRatios:
    """r_ts for every key position, with 1 − A computed without cancellation.

    Example:
        >>> s = torch.tensor([[0.0, 30.0]])  # A ≈ (e⁻³⁰, 1 − e⁻³⁰), beyond float32 near 1
        >>> k = key_ratios(s, s.argmax(-1, keepdim=True), torch.tensor([[0.0, -30.0]]))
        >>> round(float(k.r[0, 1] * k.one_minus_a[0, 1]), 4)  # A' − A: the top key drops to ½
        -0.5
    """
    log_a = s.log_softmax(-1)
    is_top = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, top, True)
    log_1ma = log_one_minus(s, log_a, is_top)
    return KeyRatios(key_ratio(log_a, log_1ma, delta), log_1ma.exp(), is_top)


def _d(noise: Tensor, clean: Tensor, work: torch.dtype) -> Tensor:
    return noise.to(work) - clean.to(work)


def log_one_minus(
    s: Float[Tensor, "b h t s"], log_a: Float[Tensor, "b h t s"], is_top: Bool[Tensor, "b h t s"]
) -> Float[Tensor, "b h t s"]:
    """log(1 − A), for each row's largest entry from the sum of the others (no cancellation)."""
    rest = s.masked_fill(is_top, NEG_INF).logsumexp(-1, keepdim=True) - s.logsumexp(
        -1, keepdim=True
    )
    return torch.where(is_top, rest.expand_as(s), torch.log1p(-log_a.exp()))


def shifted_change(
    s: Float[Tensor, "b h t s"], a: Float[Tensor, "b h t s"], delta: Float[Tensor, "b h t s"]
) -> Float[Tensor, "b h t s"]:
    """A' − A with A' = softmax(s + Δ) row by row (masked entries stay at −inf; Δ = 0 gives 0)."""
    return (s + delta).softmax(-1) - a


def key_ratio(
    log_a: Float[Tensor, "b h t s"],
    log_1ma: Float[Tensor, "b h t s"],
    delta: Float[Tensor, "b h t s"],
) -> Float[Tensor, "b h t s"]:
    """r_ts = (A'_ts − A_ts)/(1 − A_ts) = 1 − (1 − A'_ts)/(1 − A_ts), A'_ts = σ(logit A_ts + Δ_ts).

    log(1 − A') = log σ(log(1 − A) − log A − Δ); Δ = 0, rows with a single readable key
    (A = 1) and masked entries give r = 0 exactly.

    Example:
        >>> log_a = torch.tensor([-1e-6], dtype=torch.float64)  # A ≈ 1 − 1e-6
        >>> r = key_ratio(log_a, torch.log(-torch.expm1(log_a)), torch.tensor([-40.0]))
        >>> round(float(r) * 1e-6, 4)  # r·(1 − A) = A' − A ≈ −1
        -1.0
    """
    log_1map = torch.nn.functional.logsigmoid(log_1ma - log_a - delta)
    r = -torch.expm1(log_1map - log_1ma)
    moved = (delta != 0) & torch.isfinite(log_1ma) & torch.isfinite(log_a)
    return torch.where(moved, r, 0.0)


def query_effects(lp: LayerPatterns, grad: Float[Tensor, "b h t s"]) -> Float[Tensor, "b t h"]:
    """Î of each query head at each position: Σ_s ΔA_ts (g_ts − g_t,top) (ΣΔA = 0 per row)."""
    assert lp.dq is not None
    return (lp.dq * _centred(lp, grad)).sum(-1).transpose(1, 2)


def key_whole_effects(
    lp: LayerPatterns, grad: Float[Tensor, "b h t s"], n_kv: int
) -> Float[Tensor, "b g"]:
    """Î of each KV head's key with all positions patched at once."""
    assert lp.dk is not None
    return per_kv_head((lp.dk * _centred(lp, grad)).sum((-1, -2)), n_kv)


def key_effects(
    lp: LayerPatterns, grad: Float[Tensor, "b h t s"], n_kv: int
) -> Float[Tensor, "b s g"]:
    """Î of each KV head's key at position s: Σ_t r_ts [(1 − A_ts) g_ts − Σ_{j≠s} A_tj g_tj]."""
    assert lp.keys is not None
    k = lp.keys
    g = grad.to(lp.a.dtype)
    ag = lp.a * g
    top_ag = ag.gather(-1, lp.top)
    rest = ag.masked_fill(k.is_top, 0.0).sum(-1, keepdim=True)  # Σ_{j≠top} A_tj g_tj
    others = torch.where(k.is_top, rest, rest + top_ag - ag)  # Σ_{j≠s} A_tj g_tj
    per_head = (k.r * (k.one_minus_a * g - others)).sum(2)  # [b, h, s]
    return per_kv_head(per_head, n_kv).transpose(1, 2)


def _centred(lp: LayerPatterns, grad: Tensor) -> Tensor:
    g = grad.to(lp.a.dtype)
    return g - g.gather(-1, lp.top)


# --------------------------------------------------------------------------------------
# Plugging into the AtP engine
# --------------------------------------------------------------------------------------


class QKFix:
    """The QK fix for the q/k sites of one estimator call (scales measured once per layer)."""

    def __init__(
        self, model: Any, available: set[str], info: ModelInfo, sites: Sequence[Site]
    ) -> None:
        self.info = info
        self.sites = [s for s in sites if s.key.startswith("qk:")]
        self.needs: dict[int, set[str]] = {}
        for s in self.sites:
            need = self.needs.setdefault(s.layer, set())
            if s.kind == "q":
                need.add("q")
            else:
                need |= {"k_all"} if s.has_whole else set()
                need |= {"k_pos"} if s.has_positions else set()
        self.scales = _SCALES.setdefault(model, {})
        self.patterns: dict[int, LayerPatterns] = {}
        missing = [n for n in self.act_names + self.clean_names if n not in available]
        if missing:
            raise ModelStateError(
                f"the QK fix needs the hooks {missing} but this model has none of that name; "
                "use method 'atp' or 'atp+graddrop' for it"
            )

    def qk_names(self, layer: int) -> tuple[str, str]:
        return qk_hooks(self.info.rotary, layer)

    @property
    def act_names(self) -> list[str]:
        return [n for layer in self.needs for n in self.qk_names(layer)]

    @property
    def clean_names(self) -> list[str]:
        return [n for layer in self.needs for n in (hooks.scores(layer), hooks.pattern(layer))]

    @property
    def grad_names(self) -> list[str]:
        return [hooks.pattern(layer) for layer in self.needs]

    def prepare(self, run: BatchRun) -> None:
        """Measure the scales (first batch) and precompute each layer's pattern changes."""
        for layer, need in self.needs.items():
            qn, kn = self.qk_names(layer)
            scores = layer_scores(run.clean[hooks.scores(layer)], run.clean[hooks.pattern(layer)])
            if layer not in self.scales:  # measured once, on a few pairs of a first batch
                few = {n: run.clean[n][:CHECK_PAIRS] for n in (qn, kn, hooks.pattern(layer))}
                scale = fit_scale(
                    scores[:CHECK_PAIRS], few[qn], few[kn], few[hooks.pattern(layer)], layer
                )
                if scale is not None:
                    self.scales[layer] = scale
            self.patterns[layer] = prepare_layer(
                scores, run.clean[qn], run.noise[qn], run.clean[kn], run.noise[kn],
                # q·k ≡ 0 so far (zero weights): Δ(q·k) is 0 too and any scale will do
                self.scales.get(layer, self.info.d_head**-0.5), frozenset(need),
            )  # fmt: skip

    def grad_name(self, site: Site) -> str:
        return hooks.pattern(site.layer)

    def effects(self, site: Site, grads: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """(per-position, all-position) effects of the site's q or k nodes."""
        lp = self.patterns[site.layer]
        grad = grads[hooks.pattern(site.layer)]
        n_kv = self.info.n_kv_heads
        if site.kind == "q":
            per_query = query_effects(lp, grad)
            return per_query, per_query.sum(1)
        per_key = key_effects(lp, grad, n_kv) if site.has_positions else None
        whole = key_whole_effects(lp, grad, n_kv) if site.has_whole else None
        return per_key, whole
