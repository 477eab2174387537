"""The QK fix of AtP*: do not linearise query and key nodes through the softmax (DESIGN §2).

Recompute the attention probabilities exactly with the node patched and linearise only
downstream of them, Î = Σ_ts (A'_ts − A_ts) ∂L/∂A_ts:

* query at position t: A'_t· = softmax_s(ℓ_t· + Δℓ_t·), one row changes;
* key at position s: only column s changes, by Δ_ts, so
  A'_ts = σ(logit A_ts + Δ_ts), A'_tj = A_tj (1 − A'_ts)/(1 − A_ts) for j ≠ s, and
  Î = Σ_t r_ts [(1 − A_ts) g_ts − Σ_{j≠s} A_tj g_tj] with r_ts = 1 − (1 − A'_ts)/(1 − A_ts)
  (O(T²·d) per head for all positions);
* a head-level query or key: all rows (columns) patched at once, the pattern recomputed.

The scores are ℓ = f(c·q·k) + b + (a constant per row): q and k exactly as the model
uses them (clipped, QK-normed and rotated — read where the bridge fires them, computed by
:class:`~circuitgraph.arch.Arch` where it does not), c the layer's scale, f the identity or
the soft-cap c·tanh(·/c), b any fixed position bias (ALiBi, masks, sliding windows). A q or
k patch moves the scores by Δℓ = f(c·q'·k') − f(c·q·k): the bias cancels, so the clean
pattern's log stands in for ℓ and no bias is ever needed. Before it is used, that form is
checked on every batch against the model itself: the change of log A between the noise and
the clean run must be the change of f(c·q·k) (row constants aside), and z = A·v; a model
whose attention is anything else (sinks, a learned relative bias that depends on content)
is refused in one sentence rather than mis-scored.

∂L/∂A comes from the head outputs, ∂L/∂A_ts = ∂L/∂z_t · v_s (z = A·v): it needs no
gradient at the pattern hook, which some bridges fire after the fact, off the autograd
path (OPT, GPT-J), where reading it would give a silent zero.

Keys are handled in log space: 1 − A of a row's largest entry comes from the other entries
(log-sum-exp), never by subtracting A from 1, so saturated attention (A > 0.999) keeps its
precision; query and whole-key changes are read against the row's top entry (ΣΔA = 0).
In grouped-query attention a key head's effect sums over the query heads that read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitgraph.arch import Arch, hooks
from circuitgraph.attribution.sites import Site
from circuitgraph.errors import ModelStateError
from circuitgraph.run import BatchRun

__all__ = [
    "LayerAttention",
    "LayerPatterns",
    "QKFix",
    "check_layer",
    "key_effects",
    "key_whole_effects",
    "layer_attention",
    "pattern_grad",
    "prepare_layer",
    "query_effects",
]

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------
# Pure tensor functions (the equations)
# --------------------------------------------------------------------------------------


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


def pattern_grad(
    grad_z: Float[Tensor, "b t h e"], v: Float[Tensor, "b s g e"]
) -> Float[Tensor, "b h t s"]:
    """∂L/∂A_ts = ∂L/∂z_t · v_s per query head (z = A·v; query head h reads KV head h // r).

    Example:
        >>> gz, v = torch.ones(1, 2, 2, 3), torch.ones(1, 2, 1, 3)
        >>> pattern_grad(gz, v).shape, float(pattern_grad(gz, v)[0, 0, 0, 0])
        (torch.Size([1, 2, 2, 2]), 3.0)
    """
    b, t, h, e = grad_z.shape
    g = v.shape[2]
    work = torch.promote_types(grad_z.dtype, torch.float32)
    grouped = grad_z.to(work).reshape(b, t, g, h // g, e)
    return torch.einsum("btgre,bsge->bgrts", grouped, v.to(work)).reshape(b, h, t, v.shape[1])


def moved_logits(
    raw: Float[Tensor, "b h t s"] | None,
    d_raw: Float[Tensor, "... b h t s"],
    softcap: float | None,
) -> Float[Tensor, "... b h t s"]:
    """Δℓ = f(raw + Δraw) − f(raw): the change of the scores the softmax sees (f = soft-cap).

    Example:
        >>> moved_logits(None, torch.tensor([0.5]), None).tolist()
        [0.5]
        >>> round(float(moved_logits(torch.tensor([0.0]), torch.tensor([100.0]), 2.0)), 4)
        2.0
    """
    if softcap is None:
        return d_raw
    assert raw is not None
    return softcap * (torch.tanh((raw + d_raw) / softcap) - torch.tanh(raw / softcap))


def base_logits(
    scores: Tensor | None,
    pattern: Float[Tensor, "b h t s"],
    work: torch.dtype,
    log_a: Float[Tensor, "b h t s"] | None = None,
) -> Float[Tensor, "b h t s"]:
    """The clean scores up to a constant per row, −inf where the model masks a key.

    The pre-softmax scores where the bridge reports them and they reproduce the pattern
    (they keep keys whose probability underflows to 0 readable), else log A. Rows with no
    readable key become 0, and every change there 0. ``log_a``: log A when already at hand.
    """
    if log_a is None:
        log_a = pattern.to(work).clamp(min=0).log()
    s = log_a
    if scores is not None and scores.shape == pattern.shape and not torch.equal(scores, pattern):
        sc = scores.to(work)
        readable = torch.ones_like(sc, dtype=torch.bool).tril() & (
            sc > torch.finfo(sc.dtype).min / 2
        )
        sc = sc.masked_fill(~readable, NEG_INF)
        tol = 1e-4 if torch.finfo(pattern.dtype).bits >= 32 else 1e-2
        if float((sc.softmax(-1).nan_to_num() - pattern.to(work)).abs().max()) <= tol:
            s = sc
    empty = ~torch.isfinite(s).any(-1, keepdim=True)
    return s.masked_fill(empty, 0.0)


def check_layer(
    arch: Arch,
    layer: int,
    clean: tuple[Tensor, Tensor, Tensor],
    noise: tuple[Tensor, Tensor, Tensor],
    z_v: tuple[Tensor, Tensor],
    method: str,
    log_clean: Float[Tensor, "b h t s"] | None = None,
) -> None:
    """Refuse the QK fix where the model's attention is not f(c·q·k) + a fixed bias.

    ``clean``/``noise``: (pattern, q, k) of each run (q, k as the scores use them);
    ``z_v``: the clean z and v. Two identities must hold to rounding: z = A·v, and the
    change of log A between the runs equals the change of f(c·q·k), up to a constant per
    row (a fixed position bias cancels). ``method`` names what to use instead;
    ``log_clean``: log A of the clean run when already at hand.
    """
    (a_c, q_c, k_c), (a_n, q_n, k_n) = clean, noise
    work = torch.promote_types(a_c.dtype, torch.float32)
    # half precision: the model's own rounding of q·k and A (about 1e-2) dominates
    rtol, atol, ztol = (
        (1e-3, 1e-5, 1e-3) if torch.finfo(a_c.dtype).bits >= 32 else (0.1, 5e-2, 3e-2)
    )
    z, v = z_v
    az = torch.einsum("bhts,bshe->bthe", a_c.to(work), _per_query(arch.value(v), z).to(work))
    err_z = float((az - z.to(work)).abs().max()) if z.numel() else 0.0
    scale, cap = arch.scale(layer), arch.attn_softcap
    raw_c = scale * qk_dot(q_c.to(work), k_c.to(work))
    raw_n = scale * qk_dot(q_n.to(work), k_n.to(work))
    want = arch.softcap(raw_n) - arch.softcap(raw_c) if cap is not None else raw_n - raw_c
    log_c = a_c.to(work).clamp(min=0).log() if log_clean is None else log_clean
    log_n = a_n.to(work).log()
    both = torch.isfinite(log_c) & torch.isfinite(log_n)
    got = _row_centred(log_n - log_c, both)
    want = _row_centred(want, both)
    err_s = float((got - want).abs().max()) if got.numel() else 0.0
    size = float(raw_c.abs().max()) if raw_c.numel() else 0.0
    bound = rtol * (float(want.abs().max()) if want.numel() else 0.0) + atol * (1.0 + size)
    if err_s > bound or err_z > ztol * (1.0 + float(z.abs().max() if z.numel() else 0.0)):
        raise ModelStateError(
            f"the QK fix needs layer {layer}'s attention to be softmax(scale·q·k + a fixed "
            f"bias) averaging v, but recomputing it from this model's q, k and v misses by "
            f"{max(err_s, err_z):.2g}; use {method} for this model"
        )


def _per_query(v: Tensor, z: Tensor) -> Tensor:
    """KV heads repeated for the query heads that read them."""
    return v.repeat_interleave(z.shape[2] // v.shape[2], dim=2)


def _row_centred(x: Tensor, allowed: Tensor) -> Tensor:
    """The allowed entries of x minus their row mean, flattened."""
    n = allowed.sum(-1, keepdim=True).clamp(min=1)
    mean = x.masked_fill(~allowed, 0.0).sum(-1, keepdim=True) / n
    return (x - mean)[allowed]


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
    logits: Float[Tensor, "b h t s"],
    q_clean: Float[Tensor, "b t h d"],
    q_noise: Float[Tensor, "b t h d"],
    k_clean: Float[Tensor, "b s g d"],
    k_noise: Float[Tensor, "b s g d"],
    scale: float,
    needs: frozenset[str],
    softcap: float | None = None,
) -> LayerPatterns:
    """Everything the effects need that does not depend on the gradient.

    ``logits``: the clean scores up to a constant per row (log A will do), −inf where the
    model masks a key; q and k as the scores use them. ``needs`` holds any of ``q``,
    ``k_pos`` (per-position keys), ``k_all`` (whole keys).
    """
    work = torch.promote_types(logits.dtype, torch.float32)
    s = logits.to(work)
    allowed = torch.isfinite(s)
    s = s.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    allowed = torch.isfinite(s) & allowed
    a, top = s.softmax(-1), s.argmax(-1, keepdim=True)
    raw = scale * qk_dot(q_clean.to(work), k_clean.to(work)) if softcap is not None else None
    dq = dk = keys = None
    if "q" in needs:
        d = moved_logits(raw, scale * qk_dot(_d(q_noise, q_clean, work), k_clean.to(work)), softcap)
        dq = shifted_change(s, a, d.masked_fill(~allowed, 0.0))
    if needs & {"k_pos", "k_all"}:
        d = moved_logits(raw, scale * qk_dot(q_clean.to(work), _d(k_noise, k_clean, work)), softcap)
        delta = d.masked_fill(~allowed, 0.0)
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
    """The QK fix for the q/k sites of one estimator call.

    Reads, per layer, q and k as the scores use them in both runs, the pattern of both runs
    (to check the model's attention form on every batch), the clean v, and the gradient at
    the head outputs z.
    """

    METHOD = (
        "the node method 'atp' or 'atp+graddrop' (discover --node-method atp, nodes --method atp)"
    )

    def __init__(self, model: Any, arch: Arch, sites: Sequence[Site]) -> None:
        self.model, self.arch = model, arch
        self.sites = [s for s in sites if s.key.startswith("qk:")]
        self.needs: dict[int, set[str]] = {}
        for s in self.sites:
            need = self.needs.setdefault(s.layer, set())
            if s.kind == "q":
                need.add("q")
            else:
                need |= {"k_all"} if s.has_whole else set()
                need |= {"k_pos"} if s.has_positions else set()
        self.patterns: dict[int, LayerPatterns] = {}
        self.values: dict[int, Tensor] = {}

    @property
    def act_names(self) -> list[str]:
        return [
            n for layer in self.needs for n in (*self.arch.qk_hooks(layer), hooks.pattern(layer))
        ]

    @property
    def clean_names(self) -> list[str]:
        names = [n for layer in self.needs for n in (hooks.v(layer), hooks.z(layer))]
        # the pre-softmax scores where the bridge has them (else log A stands in)
        scores = [hooks.scores(layer) for layer in self.needs]
        return names + [n for n in scores if n in self.model.hook_dict]

    @property
    def grad_names(self) -> list[str]:
        return [hooks.z(layer) for layer in self.needs]

    def prepare(self, run: BatchRun) -> None:
        """Check each layer's attention form and precompute its pattern changes."""
        for layer, need in self.needs.items():
            lay = layer_attention(self.model, self.arch, layer, run.clean, run.noise, self.METHOD)
            self.values[layer] = self.arch.value(run.clean[hooks.v(layer)])
            self.patterns[layer] = prepare_layer(
                lay.s, lay.q, lay.q_noise, lay.k, lay.k_noise, lay.scale, frozenset(need),
                lay.softcap,
            )  # fmt: skip

    def grad_name(self, site: Site) -> str:
        return hooks.z(site.layer)

    def effects(self, site: Site, grads: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """(per-position, all-position) effects of the site's q or k nodes."""
        lp = self.patterns[site.layer]
        grad = pattern_grad(grads[hooks.z(site.layer)], self.values[site.layer])
        n_kv = self.arch.info.n_kv_heads
        if site.kind == "q":
            per_query = query_effects(lp, grad)
            return per_query, per_query.sum(1)
        per_key = key_effects(lp, grad, n_kv) if site.has_positions else None
        whole = key_whole_effects(lp, grad, n_kv) if site.has_whole else None
        return per_key, whole


@dataclass(frozen=True)
class LayerAttention:
    """One layer's clean attention, checked, and the noise run's q and k.

    ``s``: log A (−inf where masked); q, k as the scores use them.
    """

    s: Float[Tensor, "b h t s"]
    a: Float[Tensor, "b h t s"]
    top: Tensor
    q: Float[Tensor, "b t h d"]
    k: Float[Tensor, "b s g d"]
    q_noise: Float[Tensor, "b t h d"]
    k_noise: Float[Tensor, "b s g d"]
    scale: float
    softcap: float | None
    cos: Tensor | None
    sin: Tensor | None

    @property
    def raw(self) -> Tensor | None:
        """c·q·k of the clean run, where a soft-cap makes it matter."""
        return None if self.softcap is None else self.scale * qk_dot(self.q, self.k)


def layer_attention(
    model: Any,
    arch: Arch,
    layer: int,
    clean: dict[str, Tensor],
    noise: dict[str, Tensor],
    method: str,
    tables: bool = False,
) -> LayerAttention:
    """Read and check one layer's attention from a clean and a noise run's activations
    (those of ``arch.qk_hooks``, the pattern in both runs, z and v in the clean one;
    with ``tables`` also the rotary tables, from ``arch.cos_sin_hooks`` where they fire)."""
    q_c, k_c = arch.used_qk(model, layer, clean)
    q_n, k_n = arch.used_qk(model, layer, noise, clean)
    a_c, a_n = clean[hooks.pattern(layer)], noise[hooks.pattern(layer)]
    work = torch.promote_types(a_c.dtype, torch.float32)
    log_a = a_c.to(work).clamp(min=0).log()  # read by the check and the base scores alike
    check_layer(
        arch, layer, (a_c, q_c, k_c), (a_n, q_n, k_n),
        (clean[hooks.z(layer)], clean[hooks.v(layer)]), method, log_a,
    )  # fmt: skip
    s = base_logits(clean.get(hooks.scores(layer)), a_c, work, log_a)
    cos, sin = arch.cos_sin(model, layer, clean, q_c.shape[1], q_c) if tables else (None, None)
    return LayerAttention(
        s, s.softmax(-1), s.argmax(-1, keepdim=True), q_c.to(work), k_c.to(work),
        q_n.to(work), k_n.to(work), arch.scale(layer), arch.attn_softcap, cos, sin,
    )  # fmt: skip
