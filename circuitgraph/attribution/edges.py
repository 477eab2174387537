"""EAP and EAP-IG: edge attribution among the kept nodes (DESIGN §2, Edges).

For an edge u → v patching u's output as v's input only shifts v's residual input by
Δout_u = out_u(x_n) − out_u(x_c), so to first order

    Î(u → v) = Σ_t Δout_u[t] · ∂L/∂in_v[t].

``∂L/∂in_v`` comes from :mod:`.edge_grads`. EAP-IG averages ∂L/∂in_v over m points on the
straight line between the corrupt and the clean input embeddings (corrupt + k/m · (clean −
corrupt), k = 1..m), so ``eap-ig`` with one step is ``eap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import grad_hook, hooks, norm_input_hook, source_hook
from circuitgraph.attribution.candidates import EdgeSet
from circuitgraph.attribution.edge_grads import input_grads, target_groups
from circuitgraph.attribution.registry import register
from circuitgraph.errors import ConfigError
from circuitgraph.run import HookFn, RunOptions, attached, capture, clean_reference, keep
from circuitgraph.scores import EdgeScores
from circuitgraph.tasks.metrics import Metric, answer_logits, check_finite, widen
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, source_outputs

__all__ = ["eap", "eap_ig"]


@register("eap", "edge")
def eap(
    model: Any, pairs: PromptPairs, cands: EdgeSet, metric: Metric, opts: RunOptions
) -> EdgeScores:
    """Edge attribution patching: Δout_u · ∂L/∂in_v, every edge from one backward pass.

    Example:
        >>> scores = eap(model, pairs, EdgeSet.full(info), metric, RunOptions())  # doctest: +SKIP
    """
    return _integrated(model, pairs, cands, metric, 1, opts, "eap")


@register("eap-ig", "edge")
def eap_ig(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    opts: RunOptions,
    steps: int = 5,
) -> EdgeScores:
    """EAP with integrated gradients over the input embeddings (``steps`` points).

    Example:
        >>> scores = eap_ig(model, pairs, cands, metric, RunOptions(), steps=10)  # doctest: +SKIP
    """
    if steps < 1:
        raise ConfigError(f"expected at least one integration step but got {steps}")
    return _integrated(model, pairs, cands, metric, steps, opts, "eap-ig")


def _integrated(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    steps: int,
    opts: RunOptions,
    method: str,
) -> EdgeScores:
    weights = attn_weights(model)
    total = torch.zeros(len(cands.sources), len(cands.targets), dtype=torch.float64)
    for batch in pairs.batches(opts.batch_size):
        total += _integrated_batch(model, batch, cands, metric, steps, opts.mode, weights).cpu()
        opts.advance(len(batch))
    # where, not a product: an overflowed product of a non-edge must not become NaN
    signed = torch.where(cands.valid, total / len(pairs), 0.0)
    return EdgeScores(
        cands.sources, cands.targets, signed, signed.abs(), cands.valid.clone(), method,
        metric.name, len(pairs), forward_passes=2.0 + steps, backward_passes=float(steps),
        meta={"mode": opts.mode, "steps": steps, "ranked_by": "|E Î|"},
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
    acts_src = capture(model, src, names)
    reference = None if mode == "noising" else clean_reference(model, batch, metric)
    run = _GradRun(model, base, batch, metric, reference, cands, weights)
    grads, acts_base, logits = run(None, names)
    if reference is None:
        # noising: the base run is the clean run, the reference for every later point
        run = replace(run, reference=clean_reference(model, batch, metric, logits))
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
        groups = target_groups(self.cands.targets)
        grad_names = sorted({grad_hook(g.kind, g.layer) for g in groups})
        norm_inputs = {n for g in groups if (n := norm_input_hook(g.kind, g.layer))}
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        leaf: list[Tensor] = []

        def make_leaf(act: Tensor, hook: Any) -> Tensor:
            acts[hooks.embed] = act.detach()
            leaf.append((act if embed is None else embed).detach().requires_grad_(True))
            return leaf[0]

        fwd: list[tuple[str, HookFn]] = [(hooks.embed, make_leaf)]
        fwd += [(n, keep(acts, n)) for n in sorted((norm_inputs | set(record)) - {hooks.embed})]
        bwd = [(n, keep(grads, n)) for n in grad_names]
        with torch.enable_grad(), attached(self.model, fwd=fwd, bwd=bwd):
            logits = answer_logits(self.model(self.tokens), self.batch)
            ref = self.reference
            if ref is None:  # noising: this run is the clean reference
                ref = clean_reference(self.model, self.batch, self.metric, logits)
            values = check_finite(widen(self.metric(logits, self.batch, ref)))
            torch.autograd.grad(values.sum(), leaf)
        n_targets, embedded = len(self.cands.targets), acts[hooks.embed]
        grads_in = input_grads(self.model, groups, grads, acts, self.weights, n_targets, embedded)
        return grads_in, acts, logits.detach()
