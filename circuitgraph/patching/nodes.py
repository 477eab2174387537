"""Exact node patching: the ground truth every node estimator is judged against.

``patch_nodes`` computes, for each node n, I(n) = L(M(x_base | do(n ← n(x_src)))) − L(M(x_base))
averaged over prompt pairs. With ``mode="noising"`` the base run is clean and the source is
corrupt; ``"denoising"`` swaps them. ``ablation="zero"`` or ``"mean"`` replaces the source
value by zero or by its mean over all pairs (per position).

Several nodes share one forward pass: the batch of B pairs is repeated k times and copy j
gets node j patched, so the cost per node is one forward over B pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import Arch
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node
from circuitgraph.run import (
    Mode,
    Progress,
    RunContext,
    base_run,
    capture,
    check_choice,
    resolve,
    rows_per_pass,
    run_metric,
)
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, get_metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["ABLATIONS", "Ablation", "mean_activations", "patch_nodes", "patch_sets"]

Ablation = Literal["resample", "zero", "mean"]
ABLATIONS: tuple[str, ...] = ("resample", "zero", "mean")


def _node_mask(
    arch: Arch, slots: Sequence[Sequence[Node]], act_shape: torch.Size, device: torch.device
) -> Tensor:
    """Bool mask [k, 1, T, S]: copy j patches every node of ``slots[j]`` (all at one hook).

    S is the size of the indexed axis (heads, KV heads or neurons) of the hook's tensor
    (heads split out where the hook holds them flat), or 1 for nodes that take the whole
    hook tensor (an MLP's output).
    """
    first = next(n for nodes in slots for n in nodes)
    whole = arch.node_site(first).index is None
    t = act_shape[1]
    mask = torch.zeros(len(slots), 1, t, 1 if whole else act_shape[2], dtype=torch.bool)
    for j, nodes in enumerate(slots):
        for node in nodes:
            if node.position is not None and node.position >= t:
                continue  # this batch is shorter than the node's position
            pos = slice(None) if node.position is None else node.position
            mask[j, 0, pos, slice(None) if whole else arch.node_site(node).index] = True
    return mask.to(device)


def _patch_hook(
    arch: Arch, slots: Sequence[Sequence[Node]], source: Tensor
) -> Callable[[Tensor, Any], Tensor]:
    """A forward hook writing ``source`` into copy j's activations of the nodes ``slots[j]``."""
    k = len(slots)
    site = arch.node_site(next(n for nodes in slots for n in nodes))
    masks: dict[tuple[int, ...], Tensor] = {}

    def hook(act: Tensor, hook: Any) -> Tensor:
        view = site.view(act)
        shaped = view.view(k, view.shape[0] // k, *view.shape[1:])
        key = tuple(view.shape)
        if key not in masks:
            mask = _node_mask(arch, slots, view.shape, act.device)
            masks[key] = mask.view(*mask.shape, *([1] * (shaped.dim() - mask.dim())))
        src = (site.view(source) if source.dim() else source).unsqueeze(0).to(act.dtype)
        return torch.where(masks[key], src, shaped).reshape(act.shape)

    return hook


def _source_acts(
    model: Any,
    batch: PromptPairs,
    names: list[str],
    mode: Mode,
    ablation: Ablation,
    means: dict[str, Tensor] | None,
    scale: float = 1.0,
) -> dict[str, Tensor]:
    if ablation == "zero":
        return {n: torch.zeros((), device=batch.device) for n in names}
    if ablation == "mean":
        assert means is not None
        t = batch.seq_len
        return {n: means[n][:t].unsqueeze(0).expand(len(batch), *means[n][:t].shape) for n in names}
    base, src = (batch.clean, batch.corrupt) if mode == "noising" else (batch.corrupt, batch.clean)
    acts = capture(model, src, names)
    if scale == 1.0:
        return acts
    at_base = capture(model, base, names)
    return {n: at_base[n] + scale * (acts[n] - at_base[n]) for n in names}


def mean_activations(
    model: Any, pairs: PromptPairs, names: Sequence[str], mode: Mode, batch_size: int
) -> dict[str, Tensor]:
    """Per-position mean of the source run's activations over all pairs (mean ablation).

    Under ``torchrun`` every process computes it over all pairs (one forward per pair, small
    next to the sweep it serves), so no process depends on another's share.
    """
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(pairs.seq_len, device=pairs.device, dtype=torch.float64)
    for batch in pairs.batches(batch_size):
        src = batch.corrupt if mode == "noising" else batch.clean
        acts = capture(model, src, names)
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
    scale: float = 1.0,
) -> NodeScores:
    """Exact activation patching of every node, one (batched) forward pass per node.

    Returns :class:`~circuitgraph.scores.NodeScores` with ``signed`` = E I(n) and
    ``score`` = c(n) = |E I(n)|. Memory is bounded by ``batch_size`` and ``max_rows``
    (rows of one patched forward), not by the number of pairs. ``scale`` s patches
    base + s·(source − base) instead of the source value (resample ablation): effects at
    a vanishing s, divided by s, are what attribution patching estimates.

    Example:
        >>> from circuitgraph.nodes import enumerate_nodes
        >>> scores = patch_nodes(model, pairs, enumerate_nodes(info, ["head"]))  # doctest: +SKIP
        >>> scores.top_k(3)  # doctest: +SKIP
    """
    nodes = list(nodes)
    signed = patch_sets(
        model, pairs, [[n] for n in nodes], metric, mode, ablation, batch_size, max_rows,
        progress, scale,
    )  # fmt: skip
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
    scale: float = 1.0,
) -> Float[Tensor, " s"]:
    """E I(S) for each set S of nodes patched jointly (one batched forward per set).

    An empty set has effect exactly 0. Used for node sweeps (singletons), the random-subset
    diagnostics and block baselines. ``scale``: see :func:`patch_nodes`.

    Example:
        >>> effects = patch_sets(model, pairs, [[Node("head", 0, 1), Node("mlp", 0)]])  # doctest: +SKIP
    """
    check_choice("ablation", ablation, ABLATIONS)
    sets = [list(s) for s in sets]
    if not sets:
        raise ConfigError("expected at least one node to patch but got none")
    if scale != 1.0 and ablation != "resample":
        raise ConfigError(
            f"expected scale 1 with {ablation!r} ablation but got {scale}; a scaled patch "
            "moves towards the other run's value (ablation 'resample')"
        )
    pairs, metric, opts = resolve(model, pairs, metric, batch_size, mode, progress)
    arch = Arch.of(model)
    names = sorted({arch.node_site(n).name for s in sets for n in s})
    means = mean_activations(model, pairs, names, mode, batch_size) if ablation == "mean" else None
    total = torch.zeros(len(sets), dtype=torch.float64)
    for batch in opts.batches(pairs):
        ctx = base_run(model, batch, metric, opts.mode)
        src = _source_acts(model, batch, names, opts.mode, ablation, means, scale) if names else {}
        k = max(1, rows_per_pass(model, batch, max_rows) // len(batch))
        for start in range(0, len(sets), k):
            chunk = sets[start : start + k]
            total[start : start + len(chunk)] += (
                _patched_effects(model, arch, ctx, chunk, src).sum(1).cpu()
            )
            opts.advance(len(chunk) * len(batch))
    return opts.reduce(total) / len(pairs)


def _patched_effects(
    model: Any,
    arch: Arch,
    ctx: RunContext,
    chunk: Sequence[Sequence[Node]],
    src: dict[str, Tensor],
) -> Float[Tensor, "k b"]:
    """I(S) for each node set of the chunk and each pair of the batch, from one forward."""
    k, b = len(chunk), len(ctx.batch)
    if not any(chunk):
        return torch.zeros(k, b, dtype=torch.float64)
    fwd = []
    for name in sorted({arch.node_site(n).name for nodes in chunk for n in nodes}):
        slots = [[n for n in nodes if arch.node_site(n).name == name] for nodes in chunk]
        fwd.append((name, _patch_hook(arch, slots, src[name])))
    tokens = ctx.base_tokens.repeat(k, 1)
    with torch.no_grad():
        values, _ = run_metric(model, tokens, ctx.batch, ctx.metric, ctx.reference, fwd)
    return values.view(k, b).double() - ctx.base_metric.view(1, b).double()
