"""EAP and EAP-IG: edge attribution among the kept nodes (DESIGN §2, Edges).

For an edge u → v patching u's output as v's input only shifts v's residual input by
Δout_u = out_u(x_n) − out_u(x_c), so to first order

    Î(u → v) = Σ_t Δout_u[t] · ∂L/∂in_v[t].

``∂L/∂in_v`` comes from :mod:`.edge_grads`. EAP-IG averages ∂L/∂in_v over m points on the
straight line between the corrupt and the clean input embeddings (corrupt + k/m · (clean −
corrupt), k = 1..m), so ``eap-ig`` with one step is ``eap``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import Arch, hooks
from circuitgraph.attribution.candidates import EdgeSet
from circuitgraph.attribution.edge_grads import (
    TargetGroup,
    input_grad_blocks,
    joint_norm_acts,
    target_groups,
)
from circuitgraph.attribution.registry import register
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.run import HookFn, RunOptions, attached, clean_reference, keep
from circuitgraph.scores import EdgeScores
from circuitgraph.tasks.metrics import Metric, answer_logits, check_finite, widen
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.weights import AttnWeights, attn_weights, source_deltas

__all__ = ["eap", "eap_ig"]


@register("eap", "edge")
def eap(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    opts: RunOptions,
    max_memory: float | None = None,
) -> EdgeScores:
    """Edge attribution patching: Δout_u · ∂L/∂in_v, every edge from one backward pass.

    ``max_memory`` bounds the working memory of the contraction in bytes (default: a
    quarter of the GPU's free memory, 2 GiB on a CPU): sources and targets are taken in
    tiles that fit, so memory does not grow with the number of edges.

    Example:
        >>> scores = eap(model, pairs, EdgeSet.full(info), metric, RunOptions())  # doctest: +SKIP
    """
    return _integrated(model, pairs, cands, metric, 1, opts, "eap", max_memory)


@register("eap-ig", "edge")
def eap_ig(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    opts: RunOptions,
    steps: int = 5,
    max_memory: float | None = None,
) -> EdgeScores:
    """EAP with integrated gradients over the input embeddings (``steps`` points).

    Example:
        >>> scores = eap_ig(model, pairs, cands, metric, RunOptions(), steps=10)  # doctest: +SKIP
    """
    if steps < 1:
        raise ConfigError(f"expected at least one integration step but got {steps}")
    return _integrated(model, pairs, cands, metric, steps, opts, "eap-ig", max_memory)


def _integrated(
    model: Any,
    pairs: PromptPairs,
    cands: EdgeSet,
    metric: Metric,
    steps: int,
    opts: RunOptions,
    method: str,
    max_memory: float | None,
) -> EdgeScores:
    weights = attn_weights(model)
    total = torch.zeros(len(cands.sources), len(cands.targets), dtype=torch.float64)
    for batch in opts.batches(pairs):
        part = _integrated_batch(model, batch, cands, metric, steps, opts.mode, weights, max_memory)
        total += part.cpu()
        opts.advance(len(batch))
    # where, not a product: an overflowed product of a non-edge must not become NaN
    signed = torch.where(cands.valid, opts.reduce(total) / len(pairs), 0.0)
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
    max_memory: float | None,
) -> Float[Tensor, "s v"]:
    """Σ over pairs of Δout_u · mean_k ∂L/∂in_v(x_k) for every candidate edge.

    The point k = m is the base run itself; it goes first and also records the base run's
    source outputs and embedding, so EAP costs 2 forward passes and 1 backward pass.
    """
    base, src = (batch.clean, batch.corrupt) if mode == "noising" else (batch.corrupt, batch.clean)
    arch = Arch.of(model)
    names = sorted({arch.source_hook(s) for s in cands.sources} | {hooks.embed})
    reference = None if mode == "noising" else clean_reference(model, batch, metric)
    run = _GradRun(model, base, batch, metric, reference, cands, weights)
    point, acts_base, logits, acts_src = run(None, names, src)
    if reference is None:
        # noising: the base run is the clean run, the reference for every later point
        run = replace(run, reference=clean_reference(model, batch, metric, logits))
    tiles = _Tiles.plan(model, cands, acts_base, acts_src, weights, max_memory)
    total = tiles.contract(point)
    e_base, e_src = acts_base[hooks.embed], acts_src[hooks.embed]
    for k in range(1, steps):
        total += tiles.contract(run(e_src + (k / steps) * (e_base - e_src), ())[0])
    return total / steps


def _contract(
    flat: Float[Tensor, "s btd"], grads: Float[Tensor, "v b t d"]
) -> Float[Tensor, "s v"]:
    """Σ_{b,t} Δout_u · g_v for all (u, v) of a tile at once: one matrix product.

    Products of edges that do not exist inside a tile are computed too and masked by the
    caller: one large product is faster than one per target over only its sources.
    """
    return (flat @ grads.to(flat.dtype).reshape(grads.shape[0], -1).T).double()


def _flat(delta: Float[Tensor, "b t s d"]) -> Float[Tensor, "s btd"]:
    """Δout with one row per source, the layout the contraction multiplies (one copy)."""
    return delta.permute(2, 0, 1, 3).reshape(delta.shape[2], -1)


@dataclass(frozen=True)
class _Point:
    """The gradients of one run: ∂L/∂in_v comes out in blocks, one norm at a time."""

    model: Any
    groups: list[TargetGroup]
    grads: dict[str, Tensor]
    acts: dict[str, Tensor]
    weights: AttnWeights

    def blocks(self) -> Iterator[tuple[list[int], Float[Tensor, "v b t d"]]]:
        return input_grad_blocks(self.model, self.groups, self.grads, self.acts, self.weights)


@dataclass(frozen=True)
class _Tiles:
    """How Δout (sources) and ∂L/∂in (targets) are taken so that both fit the budget.

    Sources go in chunks of whole layers; when they all fit in half the budget their
    outputs are made once per batch, else once per target block. Targets come one norm at
    a time (merged into blocks that fill the rest when sources must be remade). Sources
    after a block's targets feed none of them and are not multiplied; a tile where no
    source can feed any target (a later layer into an earlier one) is skipped.
    """

    model: Any
    cands: EdgeSet
    base: dict[str, Tensor]
    src: dict[str, Tensor]
    weights: AttnWeights
    chunks: list[slice]
    per_block: int  # residual-stream copies one target block may hold
    cached: list[Tensor] | None

    @classmethod
    def plan(
        cls,
        model: Any,
        cands: EdgeSet,
        base: dict[str, Tensor],
        src: dict[str, Tensor],
        weights: AttnWeights,
        max_memory: float | None,
    ) -> _Tiles:
        like = base[hooks.embed]
        copies = max(2, int(_budget(max_memory, like) // (like.numel() * like.element_size())))
        chunks = _layer_chunks(cands.sources, max(1, copies // 2))
        widest = max(c.stop - c.start for c in chunks)
        tiles = cls(model, cands, base, src, weights, chunks, max(1, copies - widest), None)
        if len(chunks) == 1:
            return replace(tiles, cached=[tiles.delta(chunks[0])])
        return tiles

    def delta(self, rows: slice) -> Float[Tensor, "s btd"]:
        return _flat(
            source_deltas(self.model, self.base, self.src, self.cands.sources[rows], self.weights)
        )

    def contract(self, point: _Point) -> Float[Tensor, "s v"]:
        total = torch.zeros(
            len(self.cands.sources), len(self.cands.targets), dtype=torch.float64,
            device=self.base[hooks.embed].device,
        )  # fmt: skip
        # Δout made once: each target block is multiplied as it comes (no merging copy);
        # else blocks are merged so that Δout is remade as few times as the budget allows
        blocks = point.blocks()
        if self.cached is None:
            blocks = _merged(blocks, self.per_block)
        for cols, grads in blocks:
            for i, rows in enumerate(self.chunks):
                used = _used_rows(self.cands.valid[rows][:, cols])
                if used == 0:
                    continue
                head = slice(rows.start, rows.start + used)
                delta = self.cached[i][:used] if self.cached is not None else self.delta(head)
                total[head, cols] += _contract(delta, grads)
        return total


def _used_rows(valid: Tensor) -> int:
    """How many leading rows of a tile hold an edge (sources come in layer order, so the
    ones after the targets' layer feed none of them and are not multiplied)."""
    rows = valid.any(1).nonzero()
    return int(rows.max()) + 1 if len(rows) else 0


def _budget(max_memory: float | None, like: Tensor) -> float:
    """Bytes the tiles may use: as given, else a quarter of the GPU's free memory, or 2 GiB."""
    if max_memory is not None:
        if max_memory <= 0:
            raise ConfigError(f"expected max_memory of more than 0 bytes but got {max_memory}")
        return float(max_memory)
    if like.device.type == "cuda":
        return torch.cuda.mem_get_info(like.device)[0] / 4
    return float(2**31)


def _layer_chunks(sources: Sequence[Node], size: int) -> list[slice]:
    """Consecutive runs of sources, whole layers at a time, of at most ``size`` sources
    (a layer larger than that is a chunk of its own).

    Example:
        >>> srcs = [Node("input"), Node("head", 0, 0), Node("head", 0, 1), Node("mlp", 0)]
        >>> _layer_chunks(srcs, 3)
        [slice(0, 1, None), slice(1, 4, None)]
    """
    layers = [-1 if s.kind == "input" else s.layer for s in sources]
    runs, start = [], 0
    for i in range(1, len(sources) + 1):
        if i == len(sources) or layers[i] != layers[start]:
            runs.append((start, i))
            start = i
    if not runs:
        return [slice(0, 0)]
    chunks, (begin, end) = [], runs[0]
    for a, b in runs[1:]:
        if b - begin <= size:
            end = b
        else:
            chunks.append(slice(begin, end))
            begin, end = a, b
    return [*chunks, slice(begin, end)]


def _merged(
    blocks: Iterator[tuple[list[int], Tensor]], per_block: int
) -> Iterator[tuple[list[int], Tensor]]:
    """Target blocks joined while they fit in ``per_block`` residual-stream copies."""
    cols: list[int] = []
    parts: list[Tensor] = []
    for c, g in blocks:
        if parts and len(cols) + len(c) > per_block:
            yield cols, torch.cat(parts)
            cols, parts = [], []
        cols, parts = [*cols, *c], [*parts, g]
    if parts:
        yield cols, torch.cat(parts)


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
        self, embed: Tensor | None, record: Sequence[str], src: Tensor | None = None
    ) -> tuple[_Point, dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """The gradients that give ∂L/∂in_v of every candidate target at the run whose
        token embedding is ``embed`` (None: the tokens' own), the activations at the hooks
        named in ``record``, the answer logits, and, given ``src`` tokens, the activations
        at ``record`` of a forward of those first (no gradient; one attachment of the
        hooks serves both runs)."""
        arch = Arch.of(self.model)
        groups = target_groups(self.cands.targets)
        grad_names = sorted({arch.grad_hook(g.kind, g.layer) for g in groups})
        norm_inputs = {n for g in groups if (n := arch.norm_input_hook(g.kind, g.layer))}
        norm_inputs |= set(joint_norm_acts(arch, groups))
        acts: dict[str, Tensor] = {}
        src_acts: dict[str, Tensor] = {}
        into = [acts if src is None else src_acts]  # where the forward hooks record now
        wanted = set(record)
        grads: dict[str, Tensor] = {}
        leaf: list[Tensor] = []

        def make_leaf(act: Tensor, hook: Any) -> Tensor | None:
            into[0][hooks.embed] = act.detach()
            if into[0] is src_acts:
                return None
            leaf.append((act if embed is None else embed).detach().requires_grad_(True))
            return leaf[0]

        def rec(name: str) -> HookFn:
            def hook(act: Tensor, hook: Any) -> None:
                if into[0] is acts or name in wanted:
                    into[0][name] = act.detach()

            return hook

        fwd: list[tuple[str, HookFn]] = [(hooks.embed, make_leaf)]
        fwd += [(n, rec(n)) for n in sorted((norm_inputs | set(record)) - {hooks.embed})]
        bwd = [(n, keep(grads, n)) for n in grad_names]
        with attached(self.model, fwd=fwd, bwd=bwd):
            if src is not None:
                with torch.no_grad():
                    self.model(src)
                into[0] = acts
            with torch.enable_grad():
                logits = answer_logits(self.model(self.tokens), self.batch)
                ref = self.reference
                if ref is None:  # noising: this run is the clean reference
                    ref = clean_reference(self.model, self.batch, self.metric, logits)
                values = check_finite(widen(self.metric(logits, self.batch, ref)))
                torch.autograd.grad(values.sum(), leaf)
        point = _Point(self.model, groups, grads, acts, self.weights)
        return point, acts, logits.detach(), src_acts
