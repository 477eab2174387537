"""AtP* with GradDrop scored on the mean over prompt pairs: ``atp*-mean``.

AtP*'s GradDrop score puts the absolute value inside the expectation over pairs,

    ĉ_GD(n) = E_D[(1/(L−1)) Σ_l |Î_l(n)|],

which is the paper's choice for one prompt pair at a time. Over a distribution it ranks a
node whose effect changes sign from pair to pair (E|Î| large, |E Î| ≈ 0) as high as one
with a consistent effect, although the quantity screened for is c(n) = |E_D I(n)|: on the
zoo's MLP neurons, thousands of such sign-flipping neurons crowd the true top ones out of
the top 20. ``atp*-mean`` keeps GradDrop's per-layer cuts (a node whose direct and indirect
effects cancel still shows up in some Î_l) and takes the absolute value after the mean:

    ĉ_GDm(n) = (1/(L−1)) Σ_l |E_D Î_l(n)|.

Same passes as ``atp*``: 2 forward and at most L backward per batch. ``signed`` is E Î
(QK-fixed for q/k), as for ``atp*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from circuitgraph.arch import Arch
from circuitgraph.attribution import graddrop, qk_fix
from circuitgraph.attribution.atp import _check_nodes, _no_options, _plan
from circuitgraph.attribution.registry import register
from circuitgraph.attribution.sites import build_sites, node_effects
from circuitgraph.nodes import Node, fixed, layers_of
from circuitgraph.run import BatchRun, RunOptions, clean_run, model_device
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["atp_star_mean", "mean_graddrop"]


@register("atp*-mean")
def atp_star_mean(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: Metric,
    opts: RunOptions,
    **options: Any,
) -> NodeScores:
    """AtP* (QK fix + GradDrop) with |·| taken after the mean over pairs, per cut layer.

    Example:
        >>> from circuitgraph.attribution import get_estimator
        >>> get_estimator("atp*-mean").__name__
        'atp_star_mean'
    """
    _no_options("atp*-mean", options)
    nodes = fixed(nodes)
    _check_nodes(nodes)
    device = model_device(model)
    arch = Arch.of(model)
    info = arch.info
    sites = build_sites(arch, nodes, True, device)
    qk = qk_fix.QKFix(model, arch, sites)
    drops = graddrop.drop_layers(nodes, info.n_layers)
    plan = _plan(sites, qk, arch.residual_writes(drops))
    # sums[0] = Σ_pairs Î; sums[1 + j] = Σ_pairs Î_l for l = drops[j]
    sums = torch.zeros(1 + len(drops), len(nodes), dtype=torch.float64)

    def body(run: BatchRun) -> Tensor:
        qk.prepare(run)
        rows = [node_effects(run, run.grads(None), sites, qk, len(nodes))]
        rows += [
            node_effects(run, run.grads(layer), sites, qk, len(nodes), below=layer)
            for layer in drops
        ]
        return torch.stack([r.sum(0).double().cpu() for r in rows])

    for batch in opts.batches(pairs):
        work = batch if opts.mode == "noising" else batch.swapped()
        sums += clean_run(model, work, metric, plan, opts.mode, body)
        opts.advance(len(batch))
    means = opts.reduce(sums) / len(pairs)
    score = mean_graddrop(means[0], means[1:], drops, layers_of(nodes), info.n_layers)
    return NodeScores(
        nodes, means[0], score, "atp*-mean", metric.name, len(pairs),
        forward_passes=2.0, backward_passes=1.0 + len(drops),
        meta={"mode": opts.mode, "ranked_by": "(1/(L-1)) sum_l |E I_l| (GradDrop after the mean)",
              "dropped_layers": list(drops)},
    )  # fmt: skip


def mean_graddrop(
    plain: Tensor, dropped: Tensor, drops: Sequence[int], layers: Tensor, n_layers: int
) -> Tensor:
    """(1/(L−1)) Σ_l |E Î_l|: layers below a node repeat |E Î|, its own layer gives 0, the
    cut layers above it are read from ``dropped`` (one row per layer of ``drops``).

    Example:
        >>> plain = torch.tensor([1.0, -2.0]); cut = torch.tensor([[3.0, 0.0]])
        >>> mean_graddrop(plain, cut, (1,), torch.tensor([0, 1]), 2).tolist()  # m0: |3|; m1: 1·|-2|
        [3.0, 2.0]
    """
    if n_layers == 1:
        return plain.abs()
    below = layers.to(plain.dtype)
    total = below * plain.abs()
    for j, layer in enumerate(drops):
        above = below < layer  # the cut changes only nodes below the cut layer
        total += torch.where(above, dropped[j].abs(), torch.zeros_like(total))
    return total / (n_layers - 1)
