"""Edge attribution among the kept nodes: EAP, EAP-IG and exact edge patching.

For an edge u → v (DESIGN §2, Edges) patching u's output as v's input only shifts v's
residual input by Δout_u = out_u(x_n) − out_u(x_c), so to first order

    Î(u → v) = Σ_t Δout_u[t] · ∂L/∂in_v[t].

``∂L/∂in_v`` for a head's q/k/v input comes from the gradient at that head's q/k/v by a
vector–Jacobian product through W_Q/W_K/W_V and the target's norm, one layer at a time,
so no per-head copy of the residual stream is ever kept for the backward pass. The MLP
input's gradient comes from the gradient at its norm's output, the logits' from the final
norm's input. EAP-IG averages ∂L/∂in_v over m points on the straight line between the
corrupt and the clean input embeddings (EAP-IG: corrupt + k/m · (clean − corrupt),
k = 1..m), so ``eap-ig`` with one step is ``eap``.

Every edge estimator has one signature and is found by name in :data:`EDGE_ESTIMATORS`::

    estimator(model, pairs, candidates, metric, *, batch_size, mode, progress, **options)
        -> EdgeScores
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitgraph.errors import ConfigError, ModelStateError
from circuitgraph.hooking import attached
from circuitgraph.model import ModelInfo, model_info, require_eval
from circuitgraph.nodes import Edge, Node, can_feed, edge_sources, edge_targets, hooks, source_hook
from circuitgraph.patching import MODES, _capture, patch_edges, source_outputs
from circuitgraph.scores import EdgeScores, NodeScores
from circuitgraph.tasks.metrics import Metric, answer_logits, check_finite, get_metric, widen
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, norm_module, norm_vjp

__all__ = [
    "EDGE_ESTIMATORS",
    "EdgeSet",
    "attribute_edges",
    "edge_candidates",
    "register_edge",
]

EdgeEstimator = Callable[..., EdgeScores]
Progress = Callable[[int], None]

#: method name → edge estimator; filled by :func:`register_edge`
EDGE_ESTIMATORS: dict[str, EdgeEstimator] = {}


def register_edge(name: str) -> Callable[[EdgeEstimator], EdgeEstimator]:
    """File the decorated function as the edge estimator called ``name``."""

    def add(fn: EdgeEstimator) -> EdgeEstimator:
        EDGE_ESTIMATORS[name] = fn
        return fn

    return add


@dataclass(frozen=True)
class EdgeSet:
    """Candidate edges: sources × targets, with ``valid`` marking the edges that exist.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> info = ModelInfo("m", 1, 1, 1, 8, 4, 16, "LN", False, False, False, 10, 8)
        >>> len(EdgeSet.full(info).edges())
        9
    """

    sources: tuple[Node, ...]
    targets: tuple[Node, ...]
    valid: Bool[Tensor, "s t"]

    @classmethod
    def full(cls, info: ModelInfo) -> EdgeSet:
        """Every edge of the model."""
        return cls.between(edge_sources(info), edge_targets(info))

    @classmethod
    def between(cls, sources: Sequence[Node], targets: Sequence[Node]) -> EdgeSet:
        valid = torch.tensor([[can_feed(s, t) for t in targets] for s in sources], dtype=torch.bool)
        return cls(tuple(sources), tuple(targets), valid.reshape(len(sources), len(targets)))

    def edges(self) -> list[Edge]:
        return [Edge(self.sources[i], self.targets[j]) for i, j in self.valid.nonzero().tolist()]


def edge_candidates(
    info: ModelInfo, node_scores: NodeScores | None = None, keep: int | None = None
) -> EdgeSet:
    """Edges among the nodes kept by screening (all edges when no scores are given).

    The top ``keep`` nodes by ``node_scores`` are kept. A kept head (``a3.h5``) is a source
    and its q/k/v inputs are targets; a kept q/k/v node is a target; a kept MLP is both.
    ``input`` and ``logits`` are always kept.

    Example:
        >>> cands = edge_candidates(info, atp_star_scores, keep=20)  # doctest: +SKIP
    """
    full_s, full_t = edge_sources(info), edge_targets(info)
    if node_scores is None:
        return EdgeSet.between(full_s, full_t)
    kept = node_scores.top_k(keep) if keep is not None else list(node_scores.nodes)
    if any(n.position is not None for n in kept):
        raise ConfigError(
            "edge candidates need whole-node scores, but got per-position nodes; screen "
            "with per_position=False before attributing edges"
        )
    heads = {(n.layer, n.index) for n in kept if n.kind == "head"}
    mlps = {n.layer for n in kept if n.kind == "mlp"}
    qkv = {n for n in kept if n.kind in ("q", "k", "v")}
    sources = [s for s in full_s if s.kind == "input" or _kept_source(s, heads, mlps)]
    targets = [t for t in full_t if t.kind == "logits" or _kept_target(t, heads, mlps, qkv, info)]
    return EdgeSet.between(sources, targets)


def _kept_source(s: Node, heads: set[tuple[int, int | None]], mlps: set[int]) -> bool:
    return (s.layer, s.index) in heads if s.kind == "head" else s.layer in mlps


def _kept_target(
    t: Node, heads: set[tuple[int, int | None]], mlps: set[int], qkv: set[Node], info: ModelInfo
) -> bool:
    if t.kind == "mlp":
        return t.layer in mlps
    if t in qkv:
        return True
    if t.kind == "q" or not t.grouped:
        return (t.layer, t.index) in heads
    # a grouped key/value head feeds the query heads of its group
    group = range(t.index * info.heads_per_kv, (t.index + 1) * info.heads_per_kv)  # type: ignore[operator]
    return any((t.layer, h) in heads for h in group)


def attribute_edges(
    model: Any,
    pairs: PromptPairs,
    metric: str | Metric = "logit_diff",
    method: str = "eap",
    candidates: EdgeSet | None = None,
    batch_size: int = 32,
    mode: str = "noising",
    progress: Progress | None = None,
    **options: Any,
) -> EdgeScores:
    """Score every candidate edge with one method (``eap``, ``eap-ig``, ``exact``, ...).

    Example:
        >>> scores = attribute_edges(model, pairs, "logit_diff", method="eap")  # doctest: +SKIP
        >>> [e.id for e in scores.top_k(3)]  # doctest: +SKIP
    """
    try:
        estimator = EDGE_ESTIMATORS[method]
    except KeyError:
        raise ConfigError(
            f"expected an edge method among {sorted(EDGE_ESTIMATORS)} but got {method!r}"
        ) from None
    require_eval(model)
    info = model_info(model)
    _check_sequential(info)
    if mode not in MODES:
        raise ConfigError(f"expected mode among {list(MODES)} but got {mode!r}")
    cands = candidates if candidates is not None else EdgeSet.full(info)
    scores: EdgeScores = estimator(
        model, pairs, cands, get_metric(metric),
        batch_size=batch_size, mode=mode, progress=progress, **options,
    )  # fmt: skip
    check_finite(scores.signed, f"the {method} edge scores")
    return scores


def _check_sequential(info: ModelInfo) -> None:
    if info.parallel_blocks:
        raise ModelStateError(
            "edge attribution needs sequential blocks (attention, then MLP, each adding to the "
            "residual stream) but this model computes attention and MLP in parallel; use node "
            "attribution for it"
        )


# --------------------------------------------------------------------------------------
# EAP and EAP-IG
# --------------------------------------------------------------------------------------


@register_edge("eap")
def eap(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    *,
    batch_size: int,
    mode: str,
    progress: Progress | None,
) -> EdgeScores:
    """Edge attribution patching: Δout_u · ∂L/∂in_v, every edge from one backward pass."""
    return _integrated(model, pairs, cands, metric, 1, batch_size, mode, progress, "eap")


@register_edge("eap-ig")
def eap_ig(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    *,
    batch_size: int,
    mode: str,
    progress: Progress | None,
    steps: int = 5,
) -> EdgeScores:
    """EAP with integrated gradients over the input embeddings (``steps`` points)."""
    if steps < 1:
        raise ConfigError(f"expected at least one integration step but got {steps}")
    return _integrated(model, pairs, cands, metric, steps, batch_size, mode, progress, "eap-ig")


@register_edge("exact")
def exact(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    *,
    batch_size: int,
    mode: str,
    progress: Progress | None,
) -> EdgeScores:
    """Exact edge patching, one batched forward per edge: the ground truth."""
    edges = cands.edges()
    got = patch_edges(model, pairs, edges, metric, mode, batch_size, None, progress)  # type: ignore[arg-type]
    return _on_candidates(cands, got)


def _on_candidates(cands: EdgeSet, got: EdgeScores) -> EdgeScores:
    """Re-index ``got`` onto the candidates' sources × targets."""
    s_idx, t_idx = got.source_index, got.target_index
    rows = torch.tensor([s_idx.get(s, -1) for s in cands.sources])
    cols = torch.tensor([t_idx.get(t, -1) for t in cands.targets])
    signed = torch.zeros(len(rows), len(cols), dtype=got.signed.dtype)
    inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    signed[inside] = got.signed[rows.clamp(min=0)][:, cols.clamp(min=0)][inside]
    signed = signed * cands.valid
    return EdgeScores(
        cands.sources, cands.targets, signed, signed.abs(), cands.valid.clone(), got.method,
        got.metric, got.n_pairs, got.forward_passes, got.backward_passes, dict(got.meta),
    )  # fmt: skip


def _integrated(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    steps: int,
    batch_size: int,
    mode: str,
    progress: Progress | None,
    method: str,
) -> EdgeScores:
    weights = attn_weights(model)
    device = next(iter(model.parameters())).device
    total = torch.zeros(len(cands.sources), len(cands.targets), dtype=torch.float64)
    for batch in pairs.to(device).batches(batch_size):
        total += _integrated_batch(model, batch, cands, metric, steps, mode, weights).cpu()
        if progress is not None:
            progress(len(batch))
    # where, not a product: an overflowed product of a non-edge must not become NaN
    signed = torch.where(cands.valid, total / len(pairs), 0.0)
    return EdgeScores(
        cands.sources, cands.targets, signed, signed.abs(), cands.valid.clone(), method,
        metric.name, len(pairs), forward_passes=2.0 + steps, backward_passes=float(steps),
        meta={"mode": mode, "steps": steps, "ranked_by": "|E Î|"},
    )  # fmt: skip


def _integrated_batch(
    model: Any,
    batch: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    steps: int,
    mode: str,
    weights: AttnWeights,
) -> Float[Tensor, "s t"]:
    """Σ over pairs of Δout_u · mean_k ∂L/∂in_v(x_k) for every candidate edge.

    The point k = m is the base run itself; it goes first and also records the base run's
    source outputs and embedding, so EAP costs 2 forward passes and 1 backward pass.
    """
    base, src = (batch.clean, batch.corrupt) if mode == "noising" else (batch.corrupt, batch.clean)
    names = sorted({source_hook(s) for s in cands.sources} | {hooks.embed})
    acts_src = _capture(model, src, names)
    reference = None if mode == "noising" else _clean_reference(model, batch, metric)
    run = _GradRun(model, base, batch, metric, reference, cands, weights)
    grads, acts_base, logits = run(None, names)
    if reference is None and metric.needs_reference:
        # noising: the base run is the clean run, the reference for every later point
        run = replace(run, reference=widen(logits).log_softmax(-1))
    # Every source output is linear in its hook's activation: difference the activations first.
    delta = source_outputs({n: acts_src[n] - acts_base[n] for n in names}, cands.sources, weights)
    total = _contract(delta, grads)
    e_base, e_src = acts_base[hooks.embed], acts_src[hooks.embed]
    for k in range(1, steps):
        point = run(e_src + (k / steps) * (e_base - e_src), ())[0]
        total += _contract(delta, point)
    return total / steps


def _contract(
    delta: Float[Tensor, "b t s d"], grads: Float[Tensor, "v b t d"]
) -> Float[Tensor, "s v"]:
    """Σ_{b,t} Δout_u · g_v for all (u, v) at once: one matrix product.

    Products of edges that do not exist are computed too and masked by the caller: one
    large product is faster than one per target group over only the sources that can feed it.
    """
    b, t, s, d = delta.shape
    flat = delta.permute(2, 0, 1, 3).reshape(s, b * t * d)
    return (flat @ grads.to(delta.dtype).reshape(grads.shape[0], b * t * d).T).double()


def _clean_reference(model: Any, batch: PromptPairs, metric: Metric) -> Tensor | None:
    if not metric.needs_reference:
        return None
    with torch.no_grad(), attached(model):
        return widen(answer_logits(model(batch.clean), batch)).log_softmax(-1)


@dataclass(frozen=True)
class _TargetGroup:
    """Candidate targets that share one gradient hook: a layer's q, k or v heads, an MLP, logits."""

    kind: str
    layer: int
    cols: list[int]  # columns of the candidates' targets
    heads: list[int]  # head (or KV head) index of each column; empty for mlp / logits


def _target_groups(targets: Sequence[Node]) -> list[_TargetGroup]:
    groups: dict[tuple[str, int], _TargetGroup] = {}
    for j, t in enumerate(targets):
        g = groups.setdefault((t.kind, t.layer), _TargetGroup(t.kind, t.layer, [], []))
        g.cols.append(j)
        if t.index is not None:
            g.heads.append(t.index)
    return list(groups.values())


def _grad_hook(kind: str, layer: int) -> str:
    """Where the gradient of a target group is read."""
    if kind in ("q", "k", "v"):
        return {"q": hooks.q, "k": hooks.k, "v": hooks.v}[kind](layer)
    return hooks.ln2_out(layer) if kind == "mlp" else hooks.final_in


def _norm_input_hook(kind: str, layer: int) -> str | None:
    """The residual stream in front of the target's norm (None: logits read it directly)."""
    if kind in ("q", "k", "v"):
        return hooks.resid_pre(layer)
    return hooks.resid_mid(layer) if kind == "mlp" else None


@dataclass(frozen=True)
class _GradRun:
    """Forward + backward of the base tokens, giving ∂L/∂in_v for every candidate target."""

    model: Any
    tokens: Tensor
    batch: PromptPairs
    metric: Metric
    reference: Tensor | None  # None in noising: the base run is the clean reference
    cands: EdgeSet
    weights: AttnWeights

    def __call__(
        self, embed: Tensor | None, record: Sequence[str]
    ) -> tuple[Float[Tensor, "v b t d"], dict[str, Tensor], Tensor]:
        """∂L/∂in_v of every candidate target (in the candidates' order) at the run whose
        token embedding is ``embed`` (None: the tokens' own), the activations at the hooks
        named in ``record``, and the answer logits."""
        groups = _target_groups(self.cands.targets)
        grad_names = sorted({_grad_hook(g.kind, g.layer) for g in groups})
        norm_inputs = {n for g in groups if (n := _norm_input_hook(g.kind, g.layer))}
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        leaf: list[Tensor] = []

        def make_leaf(act: Tensor, hook: Any) -> Tensor:
            acts[hooks.embed] = act.detach()
            leaf.append((act if embed is None else embed).detach().requires_grad_(True))
            return leaf[0]

        fwd: list[tuple[str, Callable[..., Any]]] = [(hooks.embed, make_leaf)]
        fwd += [(n, _keep(acts, n)) for n in sorted((norm_inputs | set(record)) - {hooks.embed})]
        bwd = [(n, _keep(grads, n)) for n in grad_names]
        with torch.enable_grad(), attached(self.model, fwd=fwd, bwd=bwd):
            logits = answer_logits(self.model(self.tokens), self.batch)
            ref = self.reference
            if ref is None and self.metric.needs_reference:
                ref = widen(logits.detach()).log_softmax(-1)
            values = check_finite(widen(self.metric(logits, self.batch, ref)))
            torch.autograd.grad(values.sum(), leaf)
        n_targets, embedded = len(self.cands.targets), acts[hooks.embed]
        grads_in = _input_grads(self.model, groups, grads, acts, self.weights, n_targets, embedded)
        return grads_in, acts, logits.detach()


def _keep(store: dict[str, Tensor], name: str) -> Callable[[Tensor, Any], None]:
    def hook(t: Tensor, hook: Any) -> None:
        store[name] = t.detach()

    return hook


def _input_grads(
    model: Any,
    groups: Sequence[_TargetGroup],
    grads: dict[str, Tensor],
    acts: dict[str, Tensor],
    weights: AttnWeights,
    n_targets: int,
    like: Float[Tensor, "b t d"],
) -> Float[Tensor, "v b t d"]:
    """∂L/∂in_v for the targets of ``groups``, in the candidates' columns (zero elsewhere),
    shaped, typed and placed like the residual stream ``like``.

    The gradient at each group's hook is pulled back through its projection, then through
    its norm: one vector–Jacobian product per norm for all the cotangents that meet there
    (a layer's q, k and v heads share one).
    """
    out = like.new_zeros(n_targets, *like.shape)
    # The groups that read one residual stream all go through one norm (ln1 for a layer's
    # q/k/v, ln2 for its MLP); their cotangents are made one norm at a time, so no more
    # than one layer's are alive beside ``out``.
    at_norm: dict[str | None, list[_TargetGroup]] = {}
    for g in groups:
        at_norm.setdefault(_norm_input_hook(g.kind, g.layer), []).append(g)
    for x_name, members in at_norm.items():
        cols = [c for g in members for c in g.cols]
        if x_name is None:  # logits read the final norm's input directly
            out[cols] = grads[hooks.final_in].unsqueeze(0).to(out.dtype)
            continue
        cotangents = torch.cat([_normed_grad(g, grads, weights) for g in members])
        norm = norm_module(model, members[0].kind, members[0].layer)
        out[cols] = norm_vjp(norm, acts[x_name], cotangents).to(out.dtype)
    return out


def _normed_grad(
    group: _TargetGroup, grads: dict[str, Tensor], weights: AttnWeights
) -> Float[Tensor, "v b t d"]:
    """The gradient at the output of the group's norm, one cotangent per target."""
    g = grads[_grad_hook(group.kind, group.layer)]
    if group.kind == "mlp":
        return g.unsqueeze(0)
    w = weights.w_in(group.kind, group.layer)[group.heads]  # [v, d_model, d_head]
    return torch.einsum("btve,vde->vbtd", g[:, :, group.heads], w)
