"""AtP: attribution patching, and the AtP* family built on it (DESIGN §2).

For each node n and prompt pair

    Î(n) = (n(x_n) − n(x_c))ᵀ ∂L/∂n |_{x_c},   signed = E_D Î(n),   score = |E_D Î(n)|,

all nodes from one clean forward (with gradient), one noise forward and one backward per
batch. Batches stream: only per-node sums are kept, so memory does not grow with the
number of pairs. The same engine serves the AtP* variants: the QK fix (:mod:`.qk_fix`)
replaces the gradient read of query/key nodes, and GradDrop (:mod:`.graddrop`) adds one
backward per layer with that layer's residual writes cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitgraph.arch import Arch
from circuitgraph.attribution import graddrop, qk_fix
from circuitgraph.attribution.registry import Estimator, register
from circuitgraph.attribution.sites import Site, build_sites, node_effects
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node, fixed
from circuitgraph.run import BatchRun, Plan, RunOptions, clean_run, model_device
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["VARIANTS", "Variant", "atp", "atp_graddrop", "atp_qkfix", "atp_star", "run_atp"]


@dataclass(frozen=True)
class Variant:
    """Which AtP* pieces an estimator uses.

    Example:
        >>> Variant("atp*", qk_fix=True, graddrop=True).function_name
        'atp_star'
    """

    name: str
    qk_fix: bool = False
    graddrop: bool = False
    summary: str = ""

    @property
    def function_name(self) -> str:
        return self.name.replace("+", "_").replace("*", "_star")


def run_atp(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: Metric,
    variant: Variant,
    opts: RunOptions,
) -> NodeScores:
    """Stream the batches through AtP (plus the QK fix and GradDrop if asked); sum effects.

    Example:
        >>> s = run_atp(model, pairs, nodes, metric, Variant("atp"), RunOptions())  # doctest: +SKIP
    """
    nodes = fixed(nodes)
    _check_nodes(nodes)
    device = model_device(model)
    arch = Arch.of(model)
    info = arch.info
    sites = build_sites(arch, nodes, variant.qk_fix, device)
    qk = qk_fix.QKFix(model, arch, sites) if variant.qk_fix else None
    drops = graddrop.drop_layers(nodes, info.n_layers) if variant.graddrop else ()
    plan = _plan(sites, qk, arch.residual_writes(drops))
    signed = torch.zeros(len(nodes), dtype=torch.float64)
    gd = torch.zeros(len(nodes), dtype=torch.float64)

    def body(run: BatchRun) -> tuple[Tensor, Tensor | None]:
        if qk is not None:
            qk.prepare(run)
        plain = node_effects(run, run.grads(None), sites, qk, len(nodes))
        if not variant.graddrop:
            return plain, None
        return plain, graddrop.abs_sum(run, plain, sites, drops, nodes, info.n_layers, qk)

    for batch in opts.batches(pairs):
        work = batch if opts.mode == "noising" else batch.swapped()
        plain, dropped = clean_run(model, work, metric, plan, opts.mode, body)
        signed += plain.sum(0).double().cpu()
        if dropped is not None:
            gd += dropped.sum(0).double().cpu()
        opts.advance(len(batch))
    signed, gd = opts.reduce(signed) / len(pairs), opts.reduce(gd)
    score = graddrop.score(gd, len(pairs), info.n_layers) if variant.graddrop else signed.abs()
    return NodeScores(
        nodes, signed, score, variant.name, metric.name, len(pairs),
        forward_passes=2.0, backward_passes=1.0 + len(drops),
        meta={"mode": opts.mode, "ranked_by": _ranked_by(variant), "dropped_layers": list(drops)},
    )  # fmt: skip


def _ranked_by(variant: Variant) -> str:
    if variant.graddrop:
        return "E[(1/(L-1)) sum_l |I_l|] (GradDrop)"
    return "|E I|"


def _plan(sites: Sequence[Site], qk: Any, drop_hooks: tuple[tuple[int, str], ...]) -> Plan:
    acts = {s.key for s in sites if not s.key.startswith("qk:")}
    clean_only: set[str] = set()
    grad_names = set(acts)
    if qk is not None:
        acts |= set(qk.act_names)
        clean_only |= set(qk.clean_names)
        grad_names |= set(qk.grad_names)
    return Plan(
        tuple(sorted(acts)), tuple(sorted(clean_only - acts)), tuple(sorted(grad_names)), drop_hooks
    )


def _check_nodes(nodes: Sequence[Node]) -> None:
    if not nodes:
        raise ConfigError("expected at least one node to attribute but got none")


def _no_options(method: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(
            f"the {method} method takes no options but got {sorted(options)}; remove them"
        )


#: the AtP* family: which pieces each estimator uses, and its cost per batch
VARIANTS = (
    Variant("atp", summary="Plain AtP: 2 forward + 1 backward per batch, every node at once."),
    Variant(
        "atp+qkfix", qk_fix=True,
        summary="AtP with the QK fix on query and key nodes (2 forward + 1 backward).",
    ),
    Variant(
        "atp+graddrop", graddrop=True,
        summary="AtP with GradDrop on every node (2 forward + at most L backward).",
    ),
    Variant(
        "atp*", qk_fix=True, graddrop=True,
        summary="AtP*: the QK fix on q/k nodes and GradDrop on all nodes (2 forward + at most "
        "L backward). ``signed`` is E Î (QK-fixed for q/k); ``score`` the GradDrop score.",
    ),
)  # fmt: skip


def _variant_estimator(variant: Variant) -> Estimator:
    """The shared estimator signature around :func:`run_atp` for one variant."""

    def estimate(
        model: Any,
        pairs: PromptPairs,
        nodes: Sequence[Node],
        metric: Metric,
        opts: RunOptions,
        **options: Any,
    ) -> NodeScores:
        _no_options(variant.name, options)
        return run_atp(model, pairs, nodes, metric, variant, opts)

    estimate.__name__ = estimate.__qualname__ = variant.function_name
    estimate.__doc__ = f"""{variant.summary}

    Example:
        >>> from circuitgraph.attribution import get_estimator
        >>> get_estimator({variant.name!r}).__name__
        {variant.function_name!r}
    """
    return estimate


# module-level names, as importable (and picklable) as the functions they replace
atp, atp_qkfix, atp_graddrop, atp_star = (register(v.name)(_variant_estimator(v)) for v in VARIANTS)
