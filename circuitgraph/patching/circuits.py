"""Circuits: the clean run with every edge outside the circuit fed its corrupt value.

F(C) = (L_C − L_corrupt)/(L_clean − L_corrupt) (DESIGN §2, Faithfulness): 1 for the full
model, 0 for no edges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import source_hook, target_site
from circuitgraph.errors import ConfigError
from circuitgraph.model import model_info
from circuitgraph.nodes import Edge, Node, can_feed, edge_sources, edge_targets
from circuitgraph.patching.edges import check_edge
from circuitgraph.run import RunContext, base_run, keep, resolve, run_metric
from circuitgraph.scores import EdgeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, shift_target, source_outputs

__all__ = ["CircuitEval", "evaluate_circuit", "faithfulness_curve"]


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
    pairs, metric, opts = resolve(model, pairs, metric, batch_size)
    info = model_info(model)
    sources, targets = edge_sources(info), edge_targets(info)
    inside = _circuit_mask(sources, targets, set(edges))
    patched = _feeds(sources, targets) & ~inside
    weights = attn_weights(model)
    names = sorted({source_hook(s) for s in sources})
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in opts.batches(pairs):
        ctx = base_run(model, batch, metric, "noising")
        corrupt: dict[str, Tensor] = {}  # the corrupt run's source activations, kept as it runs
        with torch.no_grad():
            corrupt_vals, _ = run_metric(
                model, batch.corrupt, batch, metric, ctx.reference,
                [(n, keep(corrupt, n, detach=False)) for n in names],
            )  # fmt: skip
        corrupt_out = source_outputs(corrupt, sources, weights)
        circuit_vals = _circuit_run(model, ctx, sources, targets, patched, corrupt_out, weights)
        for i, v in enumerate((circuit_vals, ctx.base_metric, corrupt_vals)):
            sums[i] += v.double().sum().cpu()
    means = (opts.reduce(sums) / len(pairs)).tolist()
    return CircuitEval(int(inside.sum()), means[0], means[1], means[2])


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
    mask = torch.zeros(len(sources), len(targets), dtype=torch.bool)
    for e in edges:
        check_edge(e)
        if e.src not in s_idx or e.dst not in t_idx:
            raise ConfigError(f"edge {e.id} is not an edge of this model")
        mask[s_idx[e.src], t_idx[e.dst]] = True
    return mask


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
    fwd += [(r, keep(live, r, detach=False)) for r in residuals]
    fwd += [(n, adjust(n)) for n in dict.fromkeys(target_site(t).name for t in targets)]
    with torch.no_grad():
        values, _ = run_metric(model, ctx.base_tokens, ctx.batch, ctx.metric, ctx.reference, fwd)
    return values
