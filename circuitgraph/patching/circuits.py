"""Circuits: the clean run with every edge outside the circuit fed its corrupt value.

F(C) = (L_C − L_corrupt)/(L_clean − L_corrupt) (DESIGN §2, Faithfulness): 1 for the full
model, 0 for no edges. F is refused (NaN, with a warning) when L_clean − L_corrupt is below
:data:`~circuitgraph.run.GAP_REFUSE` of the metric's typical size (see
:class:`~circuitgraph.run.MetricGap`), and reported with a warning below
:data:`~circuitgraph.run.GAP_WARN`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import Arch
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, Node, edge_sources, edge_targets
from circuitgraph.patching.edges import check_edge
from circuitgraph.run import (
    MetricGap,
    Progress,
    RunContext,
    base_run,
    gap_sums,
    keep,
    resolve,
    run_metric,
)
from circuitgraph.scores import EdgeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, SourceGaps, attn_weights, shift_target

__all__ = ["CircuitEval", "evaluate_circuit", "evaluate_circuits", "faithfulness_curve"]


@dataclass(frozen=True)
class CircuitEval:
    """The metric with only the circuit's edges clean, and the faithfulness it gives.

    F = (L_C − L_corrupt) / (L_clean − L_corrupt): 1 for the full model, 0 for no edges;
    NaN (refused) when the gap is too small to divide by (``gap.refusal`` says why).
    ``metric_scale`` is the mean over pairs of max(|L_clean,i|, |L_corrupt,i|) (None: taken
    from the means).

    Example:
        >>> CircuitEval(3, metric_circuit=1.5, metric_clean=2.0, metric_corrupt=0.0).faithfulness
        0.75
        >>> CircuitEval(3, 1.5, metric_clean=2.0, metric_corrupt=1.9999).faithfulness
        nan
    """

    n_edges: int
    metric_circuit: float
    metric_clean: float
    metric_corrupt: float
    metric_scale: float | None = None

    @property
    def gap(self) -> MetricGap:
        """The clean − corrupt gap and the scale it is judged against."""
        scale = self.metric_scale
        if scale is None:
            scale = max(abs(self.metric_clean), abs(self.metric_corrupt))
        return MetricGap(self.metric_clean, self.metric_corrupt, scale)

    @property
    def faithfulness(self) -> float:
        gap = self.gap
        if gap.refusal is not None:
            return float("nan")
        return (self.metric_circuit - self.metric_corrupt) / gap.gap


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
    return evaluate_circuits(model, pairs, [edges], metric, batch_size)[0]


def evaluate_circuits(
    model: Any,
    pairs: PromptPairs,
    circuits: Sequence[Iterable[Edge]],
    metric: str | Metric = "logit_diff",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[CircuitEval]:
    """:func:`evaluate_circuit` for several circuits, sharing each batch's clean and corrupt
    runs: 2 + len(circuits) forward passes per batch instead of 3 per circuit.

    ``progress`` receives the pairs of each batch once per circuit run.

    Example:
        >>> small, large = evaluate_circuits(model, pairs, [ranked[:10], ranked[:100]])  # doctest: +SKIP
    """
    pairs, metric, opts = resolve(model, pairs, metric, batch_size, progress=progress)
    arch = Arch.of(model)
    sources, targets = edge_sources(arch.info), edge_targets(arch.info)
    feeds = _feeds(arch, sources, targets)
    insides = [_circuit_mask(arch, sources, targets, set(edges)) for edges in circuits]
    weights = attn_weights(model)
    names = sorted({arch.source_hook(s) for s in sources})
    # the circuits..., then Σ L_clean, Σ L_corrupt, Σ max(|L_clean|, |L_corrupt|)
    sums = torch.zeros(len(insides) + 3, dtype=torch.float64)
    for batch in opts.batches(pairs):
        ctx = base_run(model, batch, metric, "noising")
        corrupt: dict[str, Tensor] = {}  # the corrupt run's source activations, kept as it runs
        with torch.no_grad():
            corrupt_vals, _ = run_metric(
                model, batch.corrupt, batch, metric, ctx.reference,
                [(n, keep(corrupt, n, detach=False)) for n in names],
            )  # fmt: skip
        for i, inside in enumerate(insides):
            values = _circuit_run(model, ctx, sources, targets, feeds & ~inside, corrupt, weights)
            sums[i] += values.double().sum().cpu()
            opts.advance(len(batch))
        sums[-3:] += gap_sums(ctx.base_metric, corrupt_vals)
    means = (opts.reduce(sums) / len(pairs)).tolist()
    results = [
        CircuitEval(int(inside.sum()), means[i], *means[-3:]) for i, inside in enumerate(insides)
    ]
    if results:
        results[0].gap.warn()  # one gap for every circuit: warn once
    return results


def faithfulness_curve(
    model: Any,
    pairs: PromptPairs,
    scores: EdgeScores | Sequence[Edge],
    sizes: Sequence[int],
    metric: str | Metric = "logit_diff",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[tuple[int, float]]:
    """F of the top-n edges for each n in ``sizes``: of the ranking by absolute score when
    ``scores`` is an :class:`~circuitgraph.scores.EdgeScores`, else of the ranked edge list
    given. The clean and corrupt runs are shared by all sizes.

    Example:
        >>> faithfulness_curve(model, pairs, eap_scores, [10, 50, 200])  # doctest: +SKIP
        [(10, 0.41), (50, 0.83), (200, 0.97)]
    """
    ranked = scores.ranking() if isinstance(scores, EdgeScores) else list(scores)
    evals = evaluate_circuits(
        model, pairs, [ranked[:n] for n in sizes], metric, batch_size, progress
    )
    return [(n, ev.faithfulness) for n, ev in zip(sizes, evals, strict=True)]


def _circuit_mask(arch: Arch, sources: list[Node], targets: list[Node], edges: set[Edge]) -> Tensor:
    """[S, V] bool: True where the edge is in the circuit."""
    s_idx = {n: i for i, n in enumerate(sources)}
    t_idx = {n: i for i, n in enumerate(targets)}
    mask = torch.zeros(len(sources), len(targets), dtype=torch.bool)
    for e in edges:
        check_edge(e, arch)
        if e.src not in s_idx or e.dst not in t_idx:
            raise ConfigError(f"edge {e.id} is not an edge of this model")
        mask[s_idx[e.src], t_idx[e.dst]] = True
    return mask


def _feeds(arch: Arch, sources: list[Node], targets: list[Node]) -> Tensor:
    """[S, V] bool: True where the source can feed the target (the edge exists)."""
    return torch.tensor([[arch.can_feed(s, t) for t in targets] for s in sources], dtype=torch.bool)


def _circuit_run(
    model: Any,
    ctx: RunContext,
    sources: list[Node],
    targets: list[Node],
    patched: Tensor,
    corrupt: dict[str, Tensor],
    weights: AttnWeights,
) -> Float[Tensor, " b"]:
    """The clean run with every non-circuit edge's source seen as corrupt by its target:
    ``patched`` [S, V] marks those edges, ``corrupt`` holds the corrupt run's source
    activations. A target's input moves by the joint shift of its patched sources (heads of
    one post-norm layer together: their writes do not add up)."""
    arch = Arch.of(model)
    names = sorted({arch.source_hook(s) for s in sources})
    live: dict[str, Tensor] = {}
    gaps = SourceGaps(model, sources, weights, corrupt)

    def record(name: str) -> Callable[[Tensor, Any], None]:
        def hook(act: Tensor, hook: Any) -> None:
            live[name] = act
            gaps.update(name, live)

        return hook

    def adjust(name: str) -> Callable[[Tensor, Any], Tensor]:
        cols = [j for j, t in enumerate(targets) if arch.target_site(t).name == name]
        mask = patched[:, cols]

        def hook(act: Tensor, hook: Any) -> Tensor:
            shifts = gaps.shifts(mask)
            out = act.clone()
            for shift, j in zip(shifts, cols, strict=True):
                site = arch.target_site(targets[j])
                x = None if site.residual is None else live[site.residual].unsqueeze(0)
                change = shift_target(model, weights, targets[j], x, shift.unsqueeze(0))[0]
                if site.index is None:
                    out += change.to(act.dtype)
                else:
                    site.view(out)[:, :, site.index] += change.to(act.dtype)
            return out

        return hook

    residuals = sorted({r for t in targets if (r := arch.target_site(t).residual)} - set(names))
    fwd: list[tuple[str, Callable[..., Any]]] = [(n, record(n)) for n in names]
    fwd += [(r, keep(live, r, detach=False)) for r in residuals]
    fwd += [(n, adjust(n)) for n in dict.fromkeys(arch.target_site(t).name for t in targets)]
    with torch.no_grad():
        values, _ = run_metric(model, ctx.base_tokens, ctx.batch, ctx.metric, ctx.reference, fwd)
    return values
