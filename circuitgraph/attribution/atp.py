"""AtP: attribution patching, and the registry every node estimator is found through.

For each node n and prompt pair (DESIGN §2)

    Î(n) = (n(x_n) − n(x_c))ᵀ ∂L/∂n |_{x_c},   signed = E_D Î(n),   score = |E_D Î(n)|,

all nodes from one clean forward (with gradient), one noise forward and one backward per
batch. Batches stream: only per-node sums are kept, so memory does not grow with the
number of pairs. The same engine serves the AtP* variants: the QK fix (:mod:`.qk_fix`)
replaces the gradient read of query/key nodes, and GradDrop (:mod:`.graddrop`) adds one
backward per layer with that layer's residual writes cut.

Every estimator has one signature and is found by name in :data:`ESTIMATORS`::

    estimator(model, pairs, nodes, metric, *, batch_size, mode, progress, **options) -> NodeScores
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.hooking import attached
from circuitgraph.model import model_info, require_eval
from circuitgraph.nodes import NODE_KINDS, Node, hook_site, hooks
from circuitgraph.patching import MODES, Progress, patch_nodes
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, answer_logits, check_finite, get_metric, widen
from circuitgraph.tasks.pairs import PromptPairs

__all__ = [
    "ESTIMATORS",
    "VARIANTS",
    "Estimator",
    "Variant",
    "get_estimator",
    "node_effects",
    "register",
    "run_atp",
]

Estimator = Callable[..., NodeScores]

#: method name → estimator; filled by :func:`register`
ESTIMATORS: dict[str, Estimator] = {}


def register(name: str) -> Callable[[Estimator], Estimator]:
    """Register the decorated function as the estimator called ``name``.

    Example:
        >>> @register("my-method")  # doctest: +SKIP
        ... def my_method(model, pairs, nodes, metric, *, batch_size, mode, progress, **options):
        ...     ...
    """

    def add(fn: Estimator) -> Estimator:
        ESTIMATORS[name] = fn
        return fn

    return add


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``.

    Example:
        >>> get_estimator("atp").__name__
        'atp'
    """
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ConfigError(
            f"expected a node-attribution method among {sorted(ESTIMATORS)} but got {name!r}; "
            "pick one of those"
        ) from None


# --------------------------------------------------------------------------------------
# Sites: the nodes read from one source of effects
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Nodes whose effects come from one place: a hook's Δ·∂L/∂act, or one layer's QK fix.

    ``key`` is the hook name, or ``qk:q:L`` / ``qk:k:L`` for QK-fixed queries and keys.
    ``whole_*`` index the all-position nodes, ``pos_*`` the per-position ones; ``out`` says
    where each sits in the result.
    """

    key: str
    kind: str
    layer: int
    whole_out: Tensor
    whole_idx: Tensor
    pos_out: Tensor
    pos_idx: Tensor
    pos_at: Tensor

    @property
    def has_whole(self) -> bool:
        return self.whole_out.numel() > 0

    @property
    def has_positions(self) -> bool:
        return self.pos_out.numel() > 0


def site_key(node: Node, qk_fix: bool) -> str:
    """Where a node's effect is read: its hook, or its layer's QK fix.

    Example:
        >>> site_key(Node("q", 2, 1), qk_fix=True), site_key(Node("q", 2, 1), qk_fix=False)
        ('qk:q:2', 'blocks.2.attn.hook_q')
    """
    if qk_fix and node.kind in ("q", "k"):
        return f"qk:{node.kind}:{node.layer}"
    return hook_site(node).name


def build_sites(nodes: Sequence[Node], qk_fix: bool, device: torch.device) -> list[Site]:
    """Group the nodes by where their effects are read (one site per hook or QK layer)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        if node.kind not in NODE_KINDS:
            raise ConfigError(
                f"expected nodes of kinds {list(NODE_KINDS)} but got {node.id}; attribute its "
                "sources or targets instead"
            )
        groups[site_key(node, qk_fix)].append(i)
    return [_site(key, [(i, nodes[i]) for i in idx], device) for key, idx in groups.items()]


def _site(key: str, members: list[tuple[int, Node]], device: torch.device) -> Site:
    def col(rows: list[tuple[int, Node]], f: Callable[[int, Node], int]) -> Tensor:
        return torch.tensor([f(i, n) for i, n in rows], dtype=torch.long, device=device)

    whole = [(i, n) for i, n in members if n.position is None]
    pos = [(i, n) for i, n in members if n.position is not None]
    first = members[0][1]
    return Site(
        key, first.kind, first.layer,
        col(whole, lambda i, n: i), col(whole, lambda i, n: n.index or 0),
        col(pos, lambda i, n: i), col(pos, lambda i, n: n.index or 0),
        col(pos, lambda i, n: n.position or 0),
    )  # fmt: skip


def gather(
    site: Site,
    out: Float[Tensor, "b n"],
    per_pos: Float[Tensor, "b t s"] | None,
    whole: Float[Tensor, "b s"] | None,
) -> None:
    """Write the site's node effects into ``out`` (nodes past a short batch's end get 0)."""
    if site.has_whole:
        assert whole is not None
        out[:, site.whole_out] = whole[:, site.whole_idx].to(out.dtype)
    if site.has_positions:
        assert per_pos is not None
        keep = site.pos_at < per_pos.shape[1]
        at, idx = site.pos_at[keep], site.pos_idx[keep]
        out[:, site.pos_out[keep]] = per_pos[:, at, idx].to(out.dtype)


# --------------------------------------------------------------------------------------
# The effect of a hook's nodes: (n(x_n) − n(x_c))ᵀ ∂L/∂n
# --------------------------------------------------------------------------------------


def dot_effects(
    kind: str, delta: Float[Tensor, "b t ..."], grad: Float[Tensor, "b t ..."]
) -> tuple[Float[Tensor, "b t s"], Float[Tensor, "b s"]]:
    """Per-position and all-position Î of every head / KV head / neuron (or the MLP) at a hook.

    Example:
        >>> per_pos, whole = dot_effects("head", torch.ones(1, 3, 2, 4), torch.ones(1, 3, 2, 4))
        >>> per_pos.shape, whole.tolist()
        (torch.Size([1, 3, 2]), [[12.0, 12.0]])
    """
    work = torch.promote_types(grad.dtype, torch.float32)
    prod = delta.to(work) * grad.to(work)
    if kind == "mlp":
        per_pos = prod.sum(-1, keepdim=True)
    elif kind == "neuron":
        per_pos = prod
    else:
        per_pos = prod.sum(-1)  # [b, t, heads, d_head] → per head
    return per_pos, per_pos.sum(1)


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


@dataclass
class BatchRun:
    """One batch's clean run: activations of both runs, and a way to take gradients.

    ``grads(drop)`` runs one backward of Σ_pairs L (pairs are independent, so every row's
    gradient is that pair's own), with the residual writes of layer ``drop`` cut when it is
    not None, and returns the gradients at the requested hooks.
    """

    clean: dict[str, Tensor]
    noise: dict[str, Tensor]
    loss: Tensor
    leaf: Tensor
    grad_store: dict[str, Tensor]
    dropper: _Dropper
    _deltas: dict[str, Tensor] = field(default_factory=dict)

    def delta(self, key: str) -> Tensor:
        """noise − clean at a hook, made once per batch (GradDrop reads it once per cut)."""
        if key not in self._deltas:
            self._deltas[key] = self.noise[key] - self.clean[key]
        return self._deltas[key]

    def grads(self, drop: int | None = None) -> dict[str, Tensor]:
        self.grad_store.clear()
        self.dropper.layer = drop
        try:
            torch.autograd.grad(self.loss, [self.leaf], retain_graph=True, allow_unused=True)
        finally:
            self.dropper.layer = None
        return dict(self.grad_store)


@dataclass
class _Dropper:
    """Which layer's residual writes get a zero gradient in the current backward (if any)."""

    layer: int | None = None

    def hook(self, layer: int) -> Callable[[Tensor, Any], Tensor | None]:
        def cut(grad: Tensor, hook: Any) -> Tensor | None:
            return torch.zeros_like(grad) if self.layer == layer else None

        return cut


class _Recorder:
    """Forward and backward hooks of one batch: activations of the noise run, then of the
    clean run; the embedding leaf; gradients. Each hook keeps its value under the name
    asked for, not the bridge's canonical one."""

    def __init__(self) -> None:
        self.acts: dict[str, Tensor] = {}
        self.grads: dict[str, Tensor] = {}
        self.leaf: Tensor | None = None
        self.clean = False

    def act(self, name: str, clean_only: bool) -> Callable[[Tensor, Any], None]:
        def keep(act: Tensor, hook: Any) -> None:
            if self.clean or not clean_only:
                self.acts[name] = act.detach()

        return keep

    def grad(self, name: str) -> Callable[[Tensor, Any], None]:
        def keep(grad: Tensor, hook: Any) -> None:
            self.grads[name] = grad

        return keep

    def make_leaf(self, act: Tensor, hook: Any) -> Tensor | None:
        if not self.clean:
            return None
        self.leaf = act.detach().requires_grad_(True)
        return self.leaf

    def start_clean(self) -> dict[str, Tensor]:
        """Switch to the clean run; return the noise run's activations."""
        noise, self.acts, self.clean = self.acts, {}, True
        return noise


@dataclass(frozen=True)
class Plan:
    """What one batch needs: hooks to read in both runs, gradients, layers to drop."""

    act_names: tuple[str, ...]
    clean_only: tuple[str, ...]
    grad_names: tuple[str, ...]
    drop_hooks: tuple[tuple[int, str], ...]  # (layer, hook) of each residual write to cut


def clean_run(
    model: Any,
    batch: PromptPairs,
    metric: Metric,
    plan: Plan,
    mode: str,
    body: Callable[[BatchRun], Any],
) -> Any:
    """Run the noise forward, then the clean forward with gradient, and call ``body`` on it.

    Hooks stay attached while ``body`` takes its backward passes and are removed after,
    on error too. A detached copy of the embedding output is the only leaf that needs a
    gradient, so no parameter gradient is ever computed.
    """
    rec = _Recorder()
    dropper = _Dropper()
    fwd: list[tuple[str, Callable[..., Any]]] = [(hooks.embed, rec.make_leaf)]
    fwd += [(n, rec.act(n, clean_only=False)) for n in plan.act_names]
    fwd += [(n, rec.act(n, clean_only=True)) for n in plan.clean_only]
    bwd: list[tuple[str, Callable[..., Any]]] = [(n, rec.grad(n)) for n in plan.grad_names]
    bwd += [(name, dropper.hook(layer)) for layer, name in plan.drop_hooks]
    with attached(model, fwd=fwd):
        with torch.no_grad():
            noise_logits = answer_logits(model(batch.corrupt), batch)
        noise = rec.start_clean()
        # Backward hooks slow a forward down; only the clean run needs them.
        with torch.enable_grad(), attached(model, bwd=bwd):
            logits = model(batch.clean)
            reference = None
            if metric.needs_reference:
                source = answer_logits(logits, batch) if mode == "noising" else noise_logits
                reference = widen(source.detach()).log_softmax(-1)
            values = check_finite(widen(metric(answer_logits(logits, batch), batch, reference)))
            assert rec.leaf is not None
            run = BatchRun(rec.acts, noise, values.sum(), rec.leaf, rec.grads, dropper)
            return body(run)


def residual_writes(layers: Sequence[int], available: set[str]) -> tuple[tuple[int, str], ...]:
    """(layer, hook) of the attention and MLP outputs of each layer, where the model has them.

    Example:
        >>> residual_writes([1], {"blocks.1.hook_attn_out"})
        ((1, 'blocks.1.hook_attn_out'),)
    """
    pairs = [(lay, name) for lay in layers for name in (hooks.attn_out(lay), hooks.mlp_out(lay))]
    return tuple((lay, name) for lay, name in pairs if name in available)


# --------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------


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
    metric: str | Metric,
    variant: Variant,
    *,
    batch_size: int = 32,
    mode: str = "noising",
    progress: Progress | None = None,
) -> NodeScores:
    """Stream the batches through AtP (plus the QK fix and GradDrop if asked); sum effects.

    Example:
        >>> s = run_atp(model, pairs, nodes, "logit_diff", Variant("atp"))  # doctest: +SKIP
    """
    # The AtP* pieces plug in here (imported late: they import this module's registry).
    from circuitgraph.attribution import graddrop, qk_fix

    require_eval(model)
    metric = get_metric(metric)
    nodes = list(nodes)
    _check_inputs(pairs, nodes, mode)
    device = next(iter(model.parameters())).device
    pairs = pairs.to(device)
    info = model_info(model)
    available = set(model.hook_dict)
    sites = build_sites(nodes, variant.qk_fix, device)
    qk = qk_fix.QKFix(model, available, info, sites) if variant.qk_fix else None
    drops = graddrop.drop_layers(nodes, info.n_layers) if variant.graddrop else ()
    plan = _plan(sites, qk, residual_writes(drops, available))
    signed = torch.zeros(len(nodes), dtype=torch.float64)
    gd = torch.zeros(len(nodes), dtype=torch.float64)

    def body(run: BatchRun) -> tuple[Tensor, Tensor | None]:
        if qk is not None:
            qk.prepare(run)
        plain = node_effects(run, run.grads(None), sites, qk, len(nodes))
        if not variant.graddrop:
            return plain, None
        return plain, graddrop.abs_sum(run, plain, sites, drops, nodes, info.n_layers, qk)

    for batch in pairs.batches(batch_size):
        work = batch if mode == "noising" else batch.swapped()
        plain, dropped = clean_run(model, work, metric, plan, mode, body)
        signed += plain.sum(0).double().cpu()
        if dropped is not None:
            gd += dropped.sum(0).double().cpu()
        if progress is not None:
            progress(len(batch))
    signed /= len(pairs)
    score = graddrop.score(gd, len(pairs), info.n_layers) if variant.graddrop else signed.abs()
    return NodeScores(
        tuple(nodes), signed, score, variant.name, metric.name, len(pairs),
        forward_passes=2.0, backward_passes=1.0 + len(drops),
        meta={"mode": mode, "ranks_by": _ranks_by(variant), "dropped_layers": list(drops)},
    )  # fmt: skip


def _ranks_by(variant: Variant) -> str:
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


def node_effects(
    run: BatchRun,
    grads: dict[str, Tensor],
    sites: Sequence[Site],
    qk: Any,
    n_nodes: int,
    below: int | None = None,
) -> Float[Tensor, "b n"]:
    """Î per pair for every node (only sites in layers < ``below`` when given; others 0).

    Example:
        >>> plain = node_effects(run, run.grads(None), sites, None, len(nodes))  # doctest: +SKIP
    """
    work = torch.promote_types(run.leaf.dtype, torch.float32)
    out = torch.zeros(run.leaf.shape[0], n_nodes, device=run.leaf.device, dtype=work)
    for site in sites:
        if below is not None and site.layer >= below:
            continue
        if site.key.startswith("qk:"):
            if qk.grad_name(site) not in grads:
                continue  # no gradient reached this layer: no effect
            per_pos, whole = qk.effects(site, grads)
        elif site.key in grads:
            per_pos, whole = dot_effects(site.kind, run.delta(site.key), grads[site.key])
        else:
            continue
        gather(site, out, per_pos, whole)
    return out


def _check_inputs(pairs: PromptPairs, nodes: Sequence[Node], mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"expected mode among {list(MODES)} but got {mode!r}")
    if not nodes:
        raise ConfigError("expected at least one node to attribute but got none")
    if len(pairs) == 0:
        raise ConfigError("expected at least one prompt pair but got none")


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
        metric: str | Metric = "logit_diff",
        *,
        batch_size: int = 32,
        mode: str = "noising",
        progress: Progress | None = None,
        **options: Any,
    ) -> NodeScores:
        _no_options(variant.name, options)
        return run_atp(
            model, pairs, nodes, metric, variant,
            batch_size=batch_size, mode=mode, progress=progress,
        )  # fmt: skip

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


@register("exact")
def exact(
    model: Any,
    pairs: PromptPairs,
    nodes: Sequence[Node],
    metric: str | Metric = "logit_diff",
    *,
    batch_size: int = 32,
    mode: str = "noising",
    progress: Progress | None = None,
    **options: Any,
) -> NodeScores:
    """Exact activation patching (one forward per node); options (``ablation``, ``max_rows``)
    go to :func:`~circuitgraph.patching.patch_nodes`.

    Example:
        >>> truth = exact(model, pairs, nodes, max_rows=256)  # doctest: +SKIP
    """
    unknown = sorted(set(options) - {"ablation", "max_rows"})
    if unknown:
        raise ConfigError(
            f"the exact method takes the options 'ablation' and 'max_rows' but got {unknown}"
        )
    return patch_nodes(
        model, pairs, nodes, metric, mode=mode,  # type: ignore[arg-type]
        batch_size=batch_size, progress=progress, **options,
    )  # fmt: skip
