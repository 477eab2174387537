"""Exact interventions: the ground truth every estimator is judged against.

``patch_nodes`` computes, for each node n, I(n) = L(M(x_base | do(n ← n(x_src)))) − L(M(x_base))
averaged over prompt pairs. With ``mode="noising"`` the base run is clean and the source is
corrupt; ``"denoising"`` swaps them. ``ablation="zero"`` or ``"mean"`` replaces the source
value by zero or by its mean over all pairs (per position).

Several nodes share one forward pass: the batch of B pairs is repeated k times and copy j
gets node j patched, so the cost per node is one forward over B pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.hooking import attached
from circuitgraph.model import model_info, require_eval
from circuitgraph.nodes import (
    Edge,
    Node,
    can_feed,
    edge_sources,
    edge_targets,
    hook_site,
    hooks,
    source_hook,
    target_site,
)
from circuitgraph.scores import EdgeScores, NodeScores
from circuitgraph.tasks.metrics import Metric, answer_logits, check_finite, get_metric, widen
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, norm_module

__all__ = [
    "ABLATIONS",
    "MODES",
    "CircuitEval",
    "RunContext",
    "evaluate_circuit",
    "faithfulness_curve",
    "patch_edges",
    "patch_nodes",
    "patch_sets",
    "run_metric",
    "shift_target",
    "source_outputs",
]

Mode = Literal["noising", "denoising"]
Ablation = Literal["resample", "zero", "mean"]
MODES: tuple[str, ...] = ("noising", "denoising")
ABLATIONS: tuple[str, ...] = ("resample", "zero", "mean")
Progress = Callable[[int], None]

# Rows of one patched forward are capped so that the logits fit in about 1 GiB.
_LOGIT_BUDGET = 2**28
_MAX_ROWS = 1024


@dataclass(frozen=True)
class RunContext:
    """One batch's base run: its metric values and the clean reference distribution."""

    batch: PromptPairs
    metric: Metric
    base_tokens: Tensor
    base_metric: Float[Tensor, " b"]
    reference: Float[Tensor, "b v"] | None


def run_metric(
    model: Any,
    tokens: Tensor,
    batch: PromptPairs,
    metric: Metric,
    reference: Tensor | None = None,
    fwd: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> tuple[Float[Tensor, " r"], Float[Tensor, "r v"]]:
    """Forward ``tokens`` (possibly k copies of the batch) with hooks; metric per row.

    Returns the metric values and the answer-position logits.
    """
    with attached(model, fwd=fwd):
        logits = model(tokens)
    at_answer = answer_logits(logits, batch)
    values = check_finite(widen(metric(at_answer, batch, reference)))
    return values, at_answer


def base_run(model: Any, batch: PromptPairs, metric: Metric, mode: Mode) -> RunContext:
    """The unpatched run that effects are measured against (clean for noising)."""
    base = batch.clean if mode == "noising" else batch.corrupt
    with torch.no_grad(), attached(model):
        base_logits = answer_logits(model(base), batch)
        reference = None
        if metric.needs_reference:
            # KL is always measured from the clean distribution; in noising that is the base run.
            clean = base_logits if mode == "noising" else answer_logits(model(batch.clean), batch)
            reference = widen(clean).log_softmax(-1)
        values = check_finite(widen(metric(base_logits, batch, reference)))
    return RunContext(batch, metric, base, values, reference)


def _capture(model: Any, tokens: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """Activations at the given hooks, keyed by the names asked for.

    Each hook closes over its requested name: the bridge reports canonical names
    (``hook_z`` fires as ``attn.o.hook_in``), which must not leak out of this module.
    """
    store: dict[str, Tensor] = {}

    def grab(name: str) -> Callable[[Tensor, Any], None]:
        def hook(act: Tensor, hook: Any) -> None:
            store[name] = act.detach()

        return hook

    with torch.no_grad(), attached(model, fwd=[(n, grab(n)) for n in sorted(set(names))]):
        model(tokens)
    return store


def _node_mask(
    slots: Sequence[Sequence[Node]], act_shape: torch.Size, device: torch.device
) -> Tensor:
    """Bool mask [k, 1, T, S]: copy j patches every node of ``slots[j]`` (all at one hook).

    S is the size of the indexed axis (heads, KV heads or neurons), or 1 for nodes that
    take the whole hook tensor (an MLP's output).
    """
    first = next(n for nodes in slots for n in nodes)
    whole = hook_site(first).index is None
    t = act_shape[1]
    mask = torch.zeros(len(slots), 1, t, 1 if whole else act_shape[2], dtype=torch.bool)
    for j, nodes in enumerate(slots):
        for node in nodes:
            if node.position is not None and node.position >= t:
                continue  # this batch is shorter than the node's position
            pos = slice(None) if node.position is None else node.position
            mask[j, 0, pos, slice(None) if whole else hook_site(node).index] = True
    return mask.to(device)


def _patch_hook(slots: Sequence[Sequence[Node]], source: Tensor) -> Callable[[Tensor, Any], Tensor]:
    """A forward hook writing ``source`` into copy j's activations of the nodes ``slots[j]``."""
    k = len(slots)
    masks: dict[tuple[int, ...], Tensor] = {}

    def hook(act: Tensor, hook: Any) -> Tensor:
        shaped = act.view(k, act.shape[0] // k, *act.shape[1:])
        key = tuple(act.shape)
        if key not in masks:
            mask = _node_mask(slots, act.shape, act.device)
            masks[key] = mask.view(*mask.shape, *([1] * (shaped.dim() - mask.dim())))
        return torch.where(masks[key], source.unsqueeze(0).to(act.dtype), shaped).view_as(act)

    return hook


def _rows_per_pass(model: Any, batch: PromptPairs, max_rows: int | None) -> int:
    if max_rows is not None:
        return max(max_rows, 1)
    per_row = batch.seq_len * (int(model.cfg.d_vocab) + 16 * int(model.cfg.d_model))
    return int(min(_MAX_ROWS, max(1, _LOGIT_BUDGET // max(per_row, 1))))


def _source_acts(
    model: Any,
    batch: PromptPairs,
    names: list[str],
    mode: Mode,
    ablation: Ablation,
    means: dict[str, Tensor] | None,
) -> dict[str, Tensor]:
    if ablation == "zero":
        return {n: torch.zeros((), device=batch.device) for n in names}
    if ablation == "mean":
        assert means is not None
        t = batch.seq_len
        return {n: means[n][:t].unsqueeze(0).expand(len(batch), *means[n][:t].shape) for n in names}
    src = batch.corrupt if mode == "noising" else batch.clean
    return _capture(model, src, names)


def mean_activations(
    model: Any, pairs: PromptPairs, names: Sequence[str], mode: Mode, batch_size: int
) -> dict[str, Tensor]:
    """Per-position mean of the source run's activations over all pairs (mean ablation)."""
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(pairs.seq_len, device=pairs.device, dtype=torch.float64)
    for batch in pairs.batches(batch_size):
        src = batch.corrupt if mode == "noising" else batch.clean
        acts = _capture(model, src, names)
        w = batch.mask.to(counts.device, torch.float64)
        counts[: batch.seq_len] += w.sum(0)
        for n, a in acts.items():
            if n not in sums:
                sums[n] = torch.zeros(
                    pairs.seq_len, *a.shape[2:], device=a.device, dtype=torch.float64
                )
            wa = w.view(*w.shape, *([1] * (a.dim() - 2)))
            sums[n][: batch.seq_len] += (a.double() * wa).sum(0)
    return {n: s / counts.clamp(min=1).view(-1, *([1] * (s.dim() - 1))) for n, s in sums.items()}


def patch_nodes(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: str | Metric = "logit_diff",
    mode: Mode = "noising",
    ablation: Ablation = "resample",
    batch_size: int = 32,
    max_rows: int | None = None,
    progress: Progress | None = None,
) -> NodeScores:
    """Exact activation patching of every node, one (batched) forward pass per node.

    Returns :class:`~circuitgraph.scores.NodeScores` with ``signed`` = E I(n) and
    ``score`` = c(n) = |E I(n)|. Memory is bounded by ``batch_size`` and ``max_rows``
    (rows of one patched forward), not by the number of pairs.

    Example:
        >>> from circuitgraph.nodes import enumerate_nodes
        >>> scores = patch_nodes(model, pairs, enumerate_nodes(info, ["head"]))  # doctest: +SKIP
        >>> scores.top_k(3)  # doctest: +SKIP
    """
    nodes = list(nodes)
    signed = patch_sets(
        model, pairs, [[n] for n in nodes], metric, mode, ablation, batch_size, max_rows, progress
    )
    passes = float(len(nodes)) + (1.0 if ablation == "zero" else 2.0)
    return NodeScores(
        tuple(nodes), signed, signed.abs(), "exact", get_metric(metric).name, len(pairs),
        forward_passes=passes, meta={"mode": mode, "ablation": ablation},
    )  # fmt: skip


def patch_sets(
    model: Any,
    pairs: PromptPairs,
    sets: Sequence[Sequence[Node]],
    metric: str | Metric = "logit_diff",
    mode: Mode = "noising",
    ablation: Ablation = "resample",
    batch_size: int = 32,
    max_rows: int | None = None,
    progress: Progress | None = None,
) -> Float[Tensor, " s"]:
    """E I(S) for each set S of nodes patched jointly (one batched forward per set).

    An empty set has effect exactly 0. Used for node sweeps (singletons), the random-subset
    diagnostics and block baselines.

    Example:
        >>> effects = patch_sets(model, pairs, [[Node("head", 0, 1), Node("mlp", 0)]])  # doctest: +SKIP
    """
    require_eval(model)
    metric = get_metric(metric)
    _check_choice("mode", mode, MODES)
    _check_choice("ablation", ablation, ABLATIONS)
    sets = [list(s) for s in sets]
    if not sets:
        raise ConfigError("expected at least one node to patch but got none")
    if len(pairs) == 0:
        raise ConfigError("expected at least one prompt pair but got none")
    pairs = pairs.to(_model_device(model))
    names = sorted({hook_site(n).name for s in sets for n in s})
    means = mean_activations(model, pairs, names, mode, batch_size) if ablation == "mean" else None
    total = torch.zeros(len(sets), dtype=torch.float64)
    for batch in pairs.batches(batch_size):
        ctx = base_run(model, batch, metric, mode)
        src = _source_acts(model, batch, names, mode, ablation, means) if names else {}
        k = max(1, _rows_per_pass(model, batch, max_rows) // len(batch))
        for start in range(0, len(sets), k):
            chunk = sets[start : start + k]
            total[start : start + len(chunk)] += (
                _patched_effects(model, ctx, chunk, src).sum(1).cpu()
            )
            if progress is not None:
                progress(len(chunk) * len(batch))
    return total / len(pairs)


def _patched_effects(
    model: Any, ctx: RunContext, chunk: Sequence[Sequence[Node]], src: dict[str, Tensor]
) -> Float[Tensor, "k b"]:
    """I(S) for each node set of the chunk and each pair of the batch, from one forward."""
    k, b = len(chunk), len(ctx.batch)
    if not any(chunk):
        return torch.zeros(k, b, dtype=torch.float64)
    fwd = []
    for name in sorted({hook_site(n).name for nodes in chunk for n in nodes}):
        slots = [[n for n in nodes if hook_site(n).name == name] for nodes in chunk]
        fwd.append((name, _patch_hook(slots, src[name])))
    tokens = ctx.base_tokens.repeat(k, 1)
    with torch.no_grad():
        values, _ = run_metric(model, tokens, ctx.batch, ctx.metric, ctx.reference, fwd)
    return values.view(k, b).double() - ctx.base_metric.view(1, b).double()


def _model_device(model: Any) -> torch.device:
    return next(iter(model.parameters())).device


def _check_choice(what: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"expected {what} among {list(options)} but got {value!r}")


# --------------------------------------------------------------------------------------
# Edges: a source's output read as one target's input only; circuits; faithfulness.
# --------------------------------------------------------------------------------------


def source_outputs(
    acts: dict[str, Tensor], sources: Sequence[Node], weights: AttnWeights
) -> Float[Tensor, "b t s d"]:
    """Each source's write to the residual stream: embedding, z_h · W_O[h], MLP output.

    Example:
        >>> outs = source_outputs(captured, [Node("input"), Node("head", 0, 1)], w)  # doctest: +SKIP
    """
    per_layer: dict[int, Tensor] = {}
    cols = []
    for node in sources:
        if node.kind == "head":
            if node.layer not in per_layer:
                z = acts[hooks.z(node.layer)]
                per_layer[node.layer] = torch.einsum("bthe,hed->bthd", z, weights.W_O[node.layer])
            cols.append(per_layer[node.layer][:, :, node.index])
        else:
            cols.append(acts[source_hook(node)])
    return torch.stack(cols, dim=2)


def shift_target(
    model: Any,
    weights: AttnWeights,
    target: Node,
    x: Float[Tensor, "n b t d"] | None,
    shift: Float[Tensor, "n b t d"],
) -> Tensor:
    """The change at ``target_site(target)`` when the target's residual input x moves by shift.

    q/k/v: (N(x + shift) − N(x)) W[head] with N the head's norm; MLP: N(x + shift) − N(x);
    logits: the shift itself (the final norm comes after the site).
    """
    if target.kind == "logits":
        return shift
    assert x is not None
    norm = norm_module(model, target.kind, target.layer)
    n, b, t, d = shift.shape
    moved = norm((x + shift).reshape(n * b, t, d)) - norm(x.reshape(n * b, t, d))
    moved = moved.view(n, b, t, d)
    if target.kind == "mlp":
        return moved
    w = weights.w_in(target.kind, target.layer)[target.index]  # [d_model, d_head]
    return moved @ w.to(moved.dtype)


def _edge_deltas(
    model: Any, batch: PromptPairs, sources: Sequence[Node], mode: Mode, weights: AttnWeights
) -> Float[Tensor, "b t s d"]:
    """Δout_u = out_u(x_src) − out_u(x_base) for each source (noising: corrupt − clean)."""
    names = sorted({source_hook(s) for s in sources})
    base, src = (batch.clean, batch.corrupt) if mode == "noising" else (batch.corrupt, batch.clean)
    out_base = source_outputs(_capture(model, base, names), sources, weights)
    out_src = source_outputs(_capture(model, src, names), sources, weights)
    return out_src - out_base


def _record(live: dict[str, Tensor], name: str) -> Callable[[Tensor, Any], None]:
    def hook(act: Tensor, hook: Any) -> None:
        live[name] = act

    return hook


def _edge_patch_hook(
    model: Any,
    weights: AttnWeights,
    members: list[tuple[int, Node, Tensor]],
    live: dict[str, Tensor],
    k: int,
) -> Callable[[Tensor, Any], Tensor]:
    """Forward hook at one target site: copy j's target input moves by its edge's Δout."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        out = act.clone().view(k, act.shape[0] // k, *act.shape[1:])
        for j, target, delta in members:
            site = target_site(target)
            x = (
                None
                if site.residual is None
                else live[site.residual].view(k, -1, *live[site.residual].shape[1:])[j : j + 1]
            )
            change = shift_target(model, weights, target, x, delta.unsqueeze(0))[0].to(act.dtype)
            if site.index is None:
                out[j] += change
            else:
                out[j, :, :, site.index] += change
        return out.view_as(act)

    return hook


def patch_edges(
    model: Any,
    pairs: PromptPairs,
    edges: Sequence[Edge],
    metric: str | Metric = "logit_diff",
    mode: Mode = "noising",
    batch_size: int = 32,
    max_rows: int | None = None,
    progress: Progress | None = None,
) -> EdgeScores:
    """Exact edge patching: for each edge u → v, v's input shifted by Δout_u, all else clean.

    One (batched) forward per edge: the batch is repeated, one copy per edge. Returns
    :class:`~circuitgraph.scores.EdgeScores` over the edges' sources and targets.

    Example:
        >>> exact = patch_edges(model, pairs, [Edge.parse("a0.h1->a1.h0<k>")])  # doctest: +SKIP
    """
    require_eval(model)
    metric = get_metric(metric)
    _check_choice("mode", mode, MODES)
    edges = list(dict.fromkeys(edges))
    if not edges:
        raise ConfigError("expected at least one edge to patch but got none")
    for e in edges:
        _check_edge(e)
    sources = sorted({e.src for e in edges}, key=lambda n: n.sort_key)
    targets = sorted({e.dst for e in edges}, key=lambda n: n.sort_key)
    s_idx = {n: i for i, n in enumerate(sources)}
    weights = attn_weights(model)
    pairs = pairs.to(_model_device(model))
    total = torch.zeros(len(edges), dtype=torch.float64)
    for batch in pairs.batches(batch_size):
        ctx = base_run(model, batch, metric, mode)
        deltas = _edge_deltas(model, batch, sources, mode, weights)
        k = max(1, _rows_per_pass(model, batch, max_rows) // len(batch))
        for start in range(0, len(edges), k):
            chunk = edges[start : start + k]
            fx = _edge_effects(model, ctx, chunk, deltas, s_idx, weights)
            total[start : start + len(chunk)] += fx.sum(1).cpu()
            if progress is not None:
                progress(len(chunk) * len(batch))
    return _edge_scores(sources, targets, edges, total / len(pairs), metric.name, len(pairs))


def _edge_effects(
    model: Any,
    ctx: RunContext,
    chunk: Sequence[Edge],
    deltas: Tensor,
    s_idx: dict[Node, int],
    weights: AttnWeights,
) -> Float[Tensor, "k b"]:
    k, b = len(chunk), len(ctx.batch)
    groups: dict[str, list[tuple[int, Node, Tensor]]] = defaultdict(list)
    for j, e in enumerate(chunk):
        groups[target_site(e.dst).name].append((j, e.dst, deltas[:, :, s_idx[e.src]]))
    live: dict[str, Tensor] = {}
    residuals = {r for e in chunk if (r := target_site(e.dst).residual)}
    fwd: list[tuple[str, Callable[..., Any]]] = [(r, _record(live, r)) for r in sorted(residuals)]
    fwd += [(n, _edge_patch_hook(model, weights, m, live, k)) for n, m in groups.items()]
    with torch.no_grad():
        values, _ = run_metric(
            model, ctx.base_tokens.repeat(k, 1), ctx.batch, ctx.metric, ctx.reference, fwd
        )
    return values.view(k, b).double() - ctx.base_metric.view(1, b).double()


def _check_edge(e: Edge) -> None:
    source_hook(e.src)
    target_site(e.dst)
    if not can_feed(e.src, e.dst):
        raise ConfigError(
            f"edge {e.id} does not exist: {e.src.id} writes to the residual stream after "
            f"{e.dst.id} reads it"
        )


def _edge_scores(
    sources: Sequence[Node],
    targets: Sequence[Node],
    edges: Sequence[Edge],
    signed: Tensor,
    metric: str,
    n_pairs: int,
) -> EdgeScores:
    s_idx = {n: i for i, n in enumerate(sources)}
    t_idx = {n: i for i, n in enumerate(targets)}
    grid = torch.zeros(len(sources), len(targets), dtype=torch.float64)
    valid = torch.zeros_like(grid, dtype=torch.bool)
    for e, value in zip(edges, signed.tolist(), strict=True):
        grid[s_idx[e.src], t_idx[e.dst]] = value
        valid[s_idx[e.src], t_idx[e.dst]] = True
    return EdgeScores(
        tuple(sources), tuple(targets), grid, grid.abs(), valid, "exact", metric, n_pairs,
        forward_passes=float(len(edges)) + 2.0,
    )  # fmt: skip


@dataclass(frozen=True)
class CircuitEval:
    """The metric with only the circuit's edges clean, and the faithfulness it gives.

    F = (L_C − L_corrupt) / (L_clean − L_corrupt): 1 for the full model, 0 for no edges.
    """

    n_edges: int
    metric_circuit: float
    metric_clean: float
    metric_corrupt: float

    @property
    def faithfulness(self) -> float:
        gap = self.metric_clean - self.metric_corrupt
        return float("nan") if gap == 0 else (self.metric_circuit - self.metric_corrupt) / gap


def evaluate_circuit(
    model: Any,
    pairs: PromptPairs,
    edges: Iterable[Edge],
    metric: str | Metric = "logit_diff",
    batch_size: int = 32,
) -> CircuitEval:
    """Run the clean input with every edge outside the circuit patched to its corrupt value.

    A target's input becomes its input in this run plus Σ over the non-circuit edges u → v
    of (out_u(corrupt) − out_u(this run)): non-circuit sources are seen as corrupt by that
    target only, while everything else flows through the patched run.

    Example:
        >>> ev = evaluate_circuit(model, pairs, scores.top_k(50))  # doctest: +SKIP
        >>> round(ev.faithfulness, 2)  # doctest: +SKIP
        0.93
    """
    require_eval(model)
    metric = get_metric(metric)
    info = model_info(model)
    sources, targets = edge_sources(info), edge_targets(info)
    keep = _circuit_mask(sources, targets, set(edges))
    patched = _feeds(sources, targets) & ~keep
    weights = attn_weights(model)
    names = sorted({source_hook(s) for s in sources})
    pairs = pairs.to(_model_device(model))
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in pairs.batches(batch_size):
        ctx = base_run(model, batch, metric, "noising")
        corrupt: dict[str, Tensor] = {}  # the corrupt run's source activations, kept as it runs
        with torch.no_grad():
            corrupt_vals, _ = run_metric(
                model, batch.corrupt, batch, metric, ctx.reference,
                [(n, _record(corrupt, n)) for n in names],
            )  # fmt: skip
        corrupt_out = source_outputs(corrupt, sources, weights)
        circuit_vals = _circuit_run(model, ctx, sources, targets, patched, corrupt_out, weights)
        for i, v in enumerate((circuit_vals, ctx.base_metric, corrupt_vals)):
            sums[i] += v.double().sum().cpu()
    means = (sums / len(pairs)).tolist()
    return CircuitEval(int(keep.sum()), means[0], means[1], means[2])


def faithfulness_curve(
    model: Any,
    pairs: PromptPairs,
    scores: EdgeScores,
    sizes: Sequence[int],
    metric: str | Metric = "logit_diff",
    batch_size: int = 32,
) -> list[tuple[int, float]]:
    """F of the top-n edges by absolute score, for each n in ``sizes``.

    Example:
        >>> faithfulness_curve(model, pairs, eap_scores, [10, 50, 200])  # doctest: +SKIP
        [(10, 0.41), (50, 0.83), (200, 0.97)]
    """
    ranked = scores.ranking()
    return [
        (n, evaluate_circuit(model, pairs, ranked[:n], metric, batch_size).faithfulness)
        for n in sizes
    ]


def _circuit_mask(sources: list[Node], targets: list[Node], edges: set[Edge]) -> Tensor:
    """[S, V] bool: True where the edge is in the circuit."""
    s_idx = {n: i for i, n in enumerate(sources)}
    t_idx = {n: i for i, n in enumerate(targets)}
    keep = torch.zeros(len(sources), len(targets), dtype=torch.bool)
    for e in edges:
        _check_edge(e)
        if e.src not in s_idx or e.dst not in t_idx:
            raise ConfigError(f"edge {e.id} is not an edge of this model")
        keep[s_idx[e.src], t_idx[e.dst]] = True
    return keep


def _feeds(sources: list[Node], targets: list[Node]) -> Tensor:
    """[S, V] bool: True where the source can feed the target (the edge exists)."""
    return torch.tensor([[can_feed(s, t) for t in targets] for s in sources], dtype=torch.bool)


def _circuit_run(
    model: Any,
    ctx: RunContext,
    sources: list[Node],
    targets: list[Node],
    patched: Tensor,
    corrupt_out: Float[Tensor, "b t s d"],
    weights: AttnWeights,
) -> Float[Tensor, " b"]:
    """The clean run with every non-circuit edge's source seen as corrupt by its target:
    ``patched`` [S, V] marks those edges, ``corrupt_out`` holds the sources' corrupt outputs."""
    names = sorted({source_hook(s) for s in sources})
    patched = patched.to(corrupt_out.device, corrupt_out.dtype)
    live: dict[str, Tensor] = {}
    gap = torch.zeros_like(corrupt_out)  # out(corrupt) − out(this run), filled as sources run

    def record(name: str) -> Callable[[Tensor, Any], None]:
        cols = [i for i, s in enumerate(sources) if source_hook(s) == name]

        def hook(act: Tensor, hook: Any) -> None:
            live[name] = act
            now = source_outputs(live, [sources[i] for i in cols], weights)
            gap[:, :, cols] = corrupt_out[:, :, cols] - now

        return hook

    def adjust(name: str) -> Callable[[Tensor, Any], Tensor]:
        cols = [j for j, t in enumerate(targets) if target_site(t).name == name]

        def hook(act: Tensor, hook: Any) -> Tensor:
            shifts = torch.einsum("btsd,sv->vbtd", gap, patched[:, cols])
            out = act.clone()
            for shift, j in zip(shifts, cols, strict=True):
                site = target_site(targets[j])
                x = None if site.residual is None else live[site.residual].unsqueeze(0)
                change = shift_target(model, weights, targets[j], x, shift.unsqueeze(0))[0]
                if site.index is None:
                    out += change.to(act.dtype)
                else:
                    out[:, :, site.index] += change.to(act.dtype)
            return out

        return hook

    residuals = sorted({r for t in targets if (r := target_site(t).residual)})
    fwd: list[tuple[str, Callable[..., Any]]] = [(n, record(n)) for n in names]
    fwd += [(r, _record(live, r)) for r in residuals]
    fwd += [(n, adjust(n)) for n in dict.fromkeys(target_site(t).name for t in targets)]
    with torch.no_grad():
        values, _ = run_metric(model, ctx.base_tokens, ctx.batch, ctx.metric, ctx.reference, fwd)
    return values
