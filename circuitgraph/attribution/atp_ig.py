"""AtP-IG: integrated gradients along each hook site's straight path (``atp-ig``).

AtP reads the gradient at the clean run only, so it misses effects that pass through a
nonlinearity the patch drives far from the clean point: a head whose output switches a
later MLP's neurons off and shrinks the final norm's scale (zoo:gpt2-4l induction, a2.h0:
AtP −1.0, exact −6.8). Integrated gradients average the gradient along the way instead.
A path per node would cost one run per node, as much as exact patching; EAP-IG's path moves
the input embeddings, along which every node moves at once and this head's effect never
shows (−0.8). ``atp-ig`` takes one path per hook site: the site's activations (all its
heads or neurons, all positions) move on the straight line from clean to corrupt while
everything upstream stays clean and everything downstream is recomputed,

    Î(n) = (n(x_n) − n(x_c))ᵀ (1/m) Σ_k ∂L/∂n |_{site = clean + α_k (noise − clean)},

α_k = (k + ½)/m (the midpoint rule). A site holding one node (an MLP's output) follows that
node's own path, so Î tends to the exact effect as m grows; a site's other nodes move along
with it, which is the approximation. Cost per batch: 2 forward passes, then m forward and
m backward per site (``steps`` = m).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from circuitgraph.arch import Arch
from circuitgraph.attribution.atp import _check_nodes
from circuitgraph.attribution.registry import register
from circuitgraph.attribution.sites import Site, build_sites, dot_effects, gather
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node, fixed
from circuitgraph.run import RunOptions, attached, clean_reference, keep, model_device, run_metric
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, answer_logits
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["atp_ig"]


@register("atp-ig")
def atp_ig(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: Metric,
    opts: RunOptions,
    steps: int = 5,
) -> NodeScores:
    """AtP with the gradient averaged over ``steps`` points of each site's clean → corrupt path.

    Example:
        >>> from circuitgraph.attribution import get_estimator
        >>> get_estimator("atp-ig").__name__
        'atp_ig'
    """
    if isinstance(steps, bool) or int(steps) < 1:
        raise ConfigError(f"expected at least one integration step but got {steps}")
    nodes = fixed(nodes)
    _check_nodes(nodes)
    sites = build_sites(Arch.of(model), nodes, False, model_device(model))
    signed = torch.zeros(len(nodes), dtype=torch.float64)
    for batch in opts.batches(pairs):
        work = batch if opts.mode == "noising" else batch.swapped()
        signed += _batch(model, work, metric, sites, len(nodes), steps).sum(0).double().cpu()
        opts.advance(len(batch))
    signed = opts.reduce(signed) / len(pairs)
    return NodeScores(
        nodes, signed, signed.abs(), "atp-ig", metric.name, len(pairs),
        forward_passes=2.0 + steps * len(sites), backward_passes=float(steps * len(sites)),
        meta={"mode": opts.mode, "steps": steps, "ranked_by": "|E I| (integrated per hook site)"},
    )  # fmt: skip


def _batch(
    model: Any, batch: PromptPairs, metric: Metric, sites: Sequence[Site], n: int, steps: int
) -> Tensor:
    """Î per pair [b, n]: every site's path integral, read at its nodes."""
    names = [s.key for s in sites]
    clean, clean_logits = _capture(model, batch.clean, batch, names)
    noise, _ = _capture(model, batch.corrupt, batch, names)
    reference = clean_reference(model, batch, metric, clean_logits)
    out: Tensor | None = None
    for site in sites:
        delta = noise[site.key] - clean[site.key]
        grad = torch.zeros_like(delta, dtype=torch.promote_types(delta.dtype, torch.float32))
        for k in range(steps):
            point = clean[site.key] + ((k + 0.5) / steps) * delta
            grad += _grad_at(model, batch, metric, reference, site.key, point) / steps
        per_pos, whole = dot_effects(site.kind, delta, grad)
        if out is None:
            out = torch.zeros(len(batch), n, device=per_pos.device, dtype=per_pos.dtype)
        gather(site, out, per_pos, whole)
    assert out is not None
    return out


def _capture(
    model: Any, tokens: Tensor, batch: PromptPairs, names: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor]:
    """Activations at ``names`` (keyed by the names asked for) and the answer logits."""
    store: dict[str, Tensor] = {}
    with torch.no_grad(), attached(model, fwd=[(n, keep(store, n)) for n in names]):
        logits = answer_logits(model(tokens), batch)
    return store, logits


def _grad_at(
    model: Any,
    batch: PromptPairs,
    metric: Metric,
    reference: Tensor | None,
    name: str,
    point: Tensor,
) -> Tensor:
    """∂(Σ_pairs L)/∂act at hook ``name`` when its activation is set to ``point``."""
    leaf = point.detach().requires_grad_(True)

    def put(act: Tensor, hook: Any) -> Tensor:
        return leaf.to(act.dtype)

    with torch.enable_grad():
        values, _ = run_metric(model, batch.clean, batch, metric, reference, [(name, put)])
        (grad,) = torch.autograd.grad(values.sum(), [leaf], allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad
