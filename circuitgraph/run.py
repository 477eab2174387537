"""The run layer: everything that runs the model for patching and attribution.

Attaching hooks (always undone), capturing activations and gradients, the unpatched base
run and its metric, the clean reference distribution (KL), the device, the options every
estimator receives resolved, and data parallelism. Patching and every estimator build on
this module and nothing below it runs the model.

Data parallel (``torchrun``): when ``torch.distributed`` is initialised, every estimator
streams only this rank's share of the batches (:meth:`RunOptions.batches`, batch i on rank
i mod world size) and all-reduces its per-pair sums once at the end
(:meth:`RunOptions.reduce`) before dividing by the number of pairs, so every rank ends with
the result of a single process over all pairs.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import bridge_hooks, hook_point, hooks
from circuitgraph.errors import CircuitGraphWarning, ConfigError
from circuitgraph.model import require_eval
from circuitgraph.tasks.metrics import Metric, answer_logits, check_finite, get_metric, widen
from circuitgraph.tasks.pairs import PromptPairs, check_pairs

__all__ = [
    "GAP_REFUSE",
    "GAP_WARN",
    "MODES",
    "BatchRun",
    "HookFn",
    "MetricGap",
    "Mode",
    "Plan",
    "Prefix",
    "Progress",
    "RunContext",
    "RunOptions",
    "attached",
    "base_run",
    "capture",
    "check_choice",
    "clean_reference",
    "clean_run",
    "full_forward",
    "gap_sums",
    "keep",
    "metric_gap",
    "model_device",
    "prefix_reuse",
    "resolve",
    "rows_per_pass",
    "run_metric",
    "world",
]

HookFn = Callable[..., Any]
Mode = Literal["noising", "denoising"]
MODES: tuple[str, ...] = ("noising", "denoising")
#: called with units of work just done (pairs, or patched rows)
Progress = Callable[[int], None]

# Rows of one patched forward are capped so that the logits fit in about 1 GiB.
_LOGIT_BUDGET = 2**28
_MAX_ROWS = 1024


# --------------------------------------------------------------------------------------
# Options, resolved once by the public entry points
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """How an estimator runs: pairs per forward pass, noising or denoising, progress.

    Example:
        >>> RunOptions(batch_size=8).mode
        'noising'
    """

    batch_size: int = 32
    mode: Mode = "noising"
    progress: Progress | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise ConfigError(f"expected a batch size of at least 1 but got {self.batch_size}")

    def advance(self, done: int) -> None:
        """Report ``done`` units of work to the progress callback, if any."""
        if self.progress is not None:
            self.progress(done)

    def batches(self, pairs: PromptPairs) -> Iterator[PromptPairs]:
        """This process's share of the batches: all of them, or under ``torchrun`` every
        world-size-th one (the same batches a single process would make).

        Example:
            >>> p = PromptPairs.from_tokens([[1, 2]] * 5, [[1, 3]] * 5, [4] * 5, [5] * 5)
            >>> [len(b) for b in RunOptions(batch_size=2).batches(p)]
            [2, 2, 1]
        """
        rank, size = world()
        for i, batch in enumerate(pairs.batches(self.batch_size)):
            if i % size == rank:
                yield batch

    def reduce(self, total: Tensor) -> Tensor:
        """Sum ``total`` over the processes of a ``torchrun`` job (itself in one process).

        Every process must call it the same number of times: estimators call it once on
        their per-pair sums, after their last batch.

        Example:
            >>> RunOptions().reduce(torch.ones(2)).tolist()
            [1.0, 1.0]
        """
        if world()[1] == 1:
            return total
        import torch.distributed as dist

        # NCCL reduces tensors on the GPU only; gloo on the CPU
        on = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else total.device
        )
        work = total.detach().to(on).clone()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(total.device)


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless ``torch.distributed`` is initialised.

    Example:
        >>> world()
        (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve(
    model: Any,
    pairs: PromptPairs,
    metric: str | Metric,
    batch_size: int = 32,
    mode: str = "noising",
    progress: Progress | None = None,
) -> tuple[PromptPairs, Metric, RunOptions]:
    """What every public entry point does first: refuse train mode and empty data, resolve
    the metric and options, refuse degenerate pairs (:func:`~circuitgraph.tasks.pairs.check_pairs`:
    token ids outside the vocabulary, answer = wrong under a metric that compares them, no
    pair whose corrupt prompt differs) and move the pairs to the model's device.

    Example:
        >>> pairs, metric, opts = resolve(model, pairs, "logit_diff")  # doctest: +SKIP
    """
    require_eval(model)
    opts = RunOptions(batch_size, mode, progress)  # type: ignore[arg-type]
    if len(pairs) == 0:
        raise ConfigError("expected at least one prompt pair but got none")
    resolved = get_metric(metric)
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    check_pairs(pairs, None if d_vocab is None else int(d_vocab), resolved.compares_wrong)
    return pairs.to(model_device(model)), resolved, opts


def check_choice(what: str, value: str, options: Sequence[str]) -> None:
    """Refuse a value outside ``options`` in one sentence.

    Example:
        >>> check_choice("mode", "noising", MODES)
    """
    if value not in options:
        raise ConfigError(f"expected {what} among {list(options)} but got {value!r}")


def model_device(model: Any) -> torch.device:
    """The device of the model's (first) parameters: where its inputs must go.

    Example:
        >>> model_device(torch.nn.Linear(1, 1))
        device(type='cpu')
    """
    return next(iter(model.parameters())).device


def rows_per_pass(model: Any, batch: PromptPairs, max_rows: int | None = None) -> int:
    """Rows (copies of batch pairs) one patched forward may hold: ``max_rows`` when given,
    else as many as keep the logits and activations within a fixed memory budget.

    Example:
        >>> rows_per_pass(None, None, max_rows=64)
        64
    """
    if max_rows is not None:
        return max(max_rows, 1)
    per_row = batch.seq_len * (int(model.cfg.d_vocab) + 16 * int(model.cfg.d_model))
    return int(min(_MAX_ROWS, max(1, _LOGIT_BUDGET // max(per_row, 1))))


# --------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------


@contextmanager
def attached(
    model: Any,
    fwd: Sequence[tuple[str, HookFn]] = (),
    bwd: Sequence[tuple[str, HookFn]] = (),
) -> Iterator[Any]:
    """Attach forward/backward hooks for the duration of the block; refuse train mode.

    They are removed on exit, on error too. A backward hook ``fn(grad, hook)`` sees
    the gradient of the hook point's output and may return a replacement, as the bridge's
    own backward hooks do, but is attached as a gradient hook on that output (see
    :func:`_grad_hook`): the bridge's are module full-backward hooks, which wrap every
    hooked module's forward and cost a small model about 15% of a forward + backward.

    Example:
        >>> with attached(model, fwd=[(name, fn)]):  # doctest: +SKIP
        ...     model(tokens)
    """
    require_eval(model)
    by_point: dict[str, list[HookFn]] = {}
    for name, fn in bwd:
        by_point.setdefault(name, []).append(fn)
    hooked = [*fwd, *((name, _grad_hook(fns)) for name, fns in by_point.items())]
    if not bridge_hooks(model):
        with model.hooks(fwd_hooks=hooked):
            yield model
        return
    # the bridge's own hooks() rebuilds its table of every hook point and alias on each
    # entry (twice: forward and backward lists), which costs a small model more than half a
    # forward pass: the points are looked up once per model (arch.hook_point) and hooked here
    added: list[tuple[Any, Any]] = []
    try:
        for name, fn in hooked:
            point = hook_point(model, name)
            # the gate is a switch of the model's config: asked on every attachment
            model.check_hooks_to_add(point, point.name or name, fn, dir="fwd")
            added.append((point, point.add_hook(fn, dir="fwd")))
        yield model
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            point.fwd_hooks[:] = [h for h in point.fwd_hooks if h is not handle]


def _grad_hook(fns: Sequence[HookFn]) -> HookFn:
    """A forward hook that passes its activation on as a view whose gradient goes through
    the backward hooks ``fns`` of one hook point: the view makes it the gradient of this
    point's output only (the same tensor may be read elsewhere too). As with the bridge's
    own backward hooks, each sees the gradient as it arrives and the last one that returns
    a tensor replaces it. Runs without gradient leave them unattached."""

    def hook(act: Tensor, hook: Any) -> Tensor | None:
        if not (isinstance(act, Tensor) and act.requires_grad):
            return None

        def on_grad(grad: Tensor) -> Tensor | None:
            out = None
            for fn in fns:
                res = fn(grad, hook)
                out = res if res is not None else out
            return out

        out = act.view_as(act)
        out.register_hook(on_grad)
        return out

    return hook


def keep(store: dict[str, Tensor], name: str, detach: bool = True) -> HookFn:
    """A hook that keeps its tensor in ``store`` under the name asked for.

    The bridge reports canonical names (a head's z fires under its output projection's
    input), which must not leak out: each hook closes over the requested name.

    Example:
        >>> store = {}
        >>> keep(store, "x")(torch.ones(1), None); store["x"].tolist()
        [1.0]
    """

    def hook(t: Tensor, hook: Any) -> None:
        store[name] = t.detach() if detach else t

    return hook


def capture(model: Any, tokens: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """Activations at the given hooks for one forward of ``tokens`` (no gradient).

    Example:
        >>> acts = capture(model, pairs.corrupt, [hooks.z(0)])  # doctest: +SKIP
    """
    store: dict[str, Tensor] = {}
    with torch.no_grad(), attached(model, fwd=[(n, keep(store, n)) for n in sorted(set(names))]):
        model(tokens)
    return store


# --------------------------------------------------------------------------------------
# The base run and the metric
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """One batch's base run: its metric values, the clean reference distribution, and the
    block outputs that patched runs starting above layer 0 reuse (None: run in full)."""

    batch: PromptPairs
    metric: Metric
    base_tokens: Tensor
    base_metric: Float[Tensor, " b"]
    reference: Float[Tensor, "b v"] | None
    prefix: Prefix | None = None


def run_metric(
    model: Any,
    tokens: Tensor,
    batch: PromptPairs,
    metric: Metric,
    reference: Tensor | None = None,
    fwd: Sequence[tuple[str, HookFn]] = (),
    prefix: Prefix | None = None,
    start: int = 0,
) -> tuple[Float[Tensor, " r"], Float[Tensor, "r v"]]:
    """Forward ``tokens`` (possibly k copies of the batch, copy-major) with hooks; metric
    per row.

    Under prefix reuse (:func:`prefix_reuse`) the logits are computed at the answer
    positions only and, given the base run's ``prefix``, blocks below ``start`` are not
    run: they hand on the base run's residual stream. Every hook in ``fwd`` must then lie
    in layer ``start`` or above (the caller starts at its lowest patched layer).

    Returns the metric values and the answer-position logits.
    """
    at_answer = _answer_forward(model, tokens, batch, fwd, prefix, start)
    values = check_finite(widen(metric(at_answer, batch, reference)))
    return values, at_answer


def _answer_forward(
    model: Any,
    tokens: Tensor,
    batch: PromptPairs,
    fwd: Sequence[tuple[str, HookFn]] = (),
    prefix: Prefix | None = None,
    start: int = 0,
) -> Float[Tensor, "r v"]:
    """The answer-position logits of one forward (see :func:`run_metric`)."""
    reuse = prefix_reuse(model)  # read before hooks are attached: it may probe the model
    copies = tokens.shape[0] // len(batch)
    with attached(model, fwd=fwd), ExitStack() as stack:
        if reuse:
            stack.enter_context(_answers_only(model, batch.answer_pos.repeat(copies)))
            if prefix is not None:
                stack.enter_context(_skipping(model, prefix, start, copies))
        logits = model(tokens)
    return logits[:, 0] if reuse else answer_logits(logits, batch)


def clean_reference(
    model: Any, batch: PromptPairs, metric: Metric, clean_logits: Tensor | None = None
) -> Float[Tensor, "b v"] | None:
    """The clean run's answer-position log-probabilities, for metrics that compare with it
    (KL); None for the others. ``clean_logits`` saves the forward when already at hand.

    Example:
        >>> clean_reference(model, batch, get_metric("logit_diff")) is None  # doctest: +SKIP
        True
    """
    if not metric.needs_reference:
        return None
    if clean_logits is None:
        with torch.no_grad(), attached(model):
            clean_logits = answer_logits(model(batch.clean), batch)
    return widen(clean_logits.detach()).log_softmax(-1)


def base_run(
    model: Any,
    batch: PromptPairs,
    metric: Metric,
    mode: str,
    starts: Iterable[int] = (),
    fwd: Sequence[tuple[str, HookFn]] = (),
) -> RunContext:
    """The unpatched run that effects are measured against (clean for noising).

    KL is always measured from the clean distribution; in noising that is the base run.
    ``starts``: the layers patched runs will start from; under prefix reuse the residual
    stream entering each is kept (one ``[batch, pos, d_model]`` tensor per layer). ``fwd``:
    hooks attached to the base run (to read activations on the way).

    Example:
        >>> ctx = base_run(model, batch, get_metric("logit_diff"), "noising", [3])  # doctest: +SKIP
    """
    base = batch.clean if mode == "noising" else batch.corrupt
    n = len(getattr(model, "blocks", ()))
    keep_outputs = {s - 1 for s in starts if 0 < s <= n} if prefix_reuse(model) else set()
    with torch.no_grad():
        with _recording(model, keep_outputs) as outputs:
            base_logits = _answer_forward(model, base, batch, fwd)
        reference = clean_reference(
            model, batch, metric, base_logits if mode == "noising" else None
        )
        values = check_finite(widen(metric(base_logits, batch, reference)))
    prefix = Prefix(outputs, len(batch)) if keep_outputs else None
    return RunContext(batch, metric, base, values, reference, prefix)


# --------------------------------------------------------------------------------------
# Prefix reuse: a patched forward computes only from its lowest patched layer
# --------------------------------------------------------------------------------------

#: set to 1 (or anything but 0) to run every patched forward in full: every block, the
#: logits at every position (the reference prefix reuse is tested and benchmarked against)
FULL_FORWARD_ENV = "CIRCUITGRAPH_FULL_FORWARD"
_FULL: ContextVar[bool | None] = ContextVar("circuitgraph_full_forward", default=None)
#: model → whether a forward from a kept block output gives the full forward's logits
_REPLAYS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Prefix:
    """One batch's base run, kept for replay: the output of block l − 1 (as the block
    returned it, detached) for each layer l a patched run starts from.

    A patched run whose patches all lie in layer l or above sees the base run's residual
    stream up to block l, so blocks 0..l−1 need not run: they hand on that output.
    """

    outputs: dict[int, Any]
    rows: int


@contextmanager
def full_forward(on: bool = True) -> Iterator[None]:
    """Within the block, patched forwards run every block and map every position to logits
    (as without prefix reuse); ``on=False`` turns prefix reuse back on inside.

    Example:
        >>> with full_forward():
        ...     prefix_reuse(model)  # doctest: +SKIP
        False
    """
    token = _FULL.set(on)
    try:
        yield
    finally:
        _FULL.reset(token)


def prefix_reuse(model: Any) -> bool:
    """Whether patched forwards of ``model`` reuse the base run below their first patch and
    compute logits at the answer positions only.

    On unless :func:`full_forward` or :data:`FULL_FORWARD_ENV` asks for full forwards, and
    only where one probe forward (read once per model) shows that a forward resumed from a
    kept block output gives the full forward's logits: a model whose blocks pass anything
    to later blocks but the residual stream (or that calls its blocks other than one after
    the other) runs every patched forward in full.

    Example:
        >>> prefix_reuse(model)  # doctest: +SKIP
        True
    """
    full = _FULL.get()
    if full is None:
        full = os.environ.get(FULL_FORWARD_ENV, "0") not in ("", "0")
    if full:
        return False
    if model not in _REPLAYS:
        _REPLAYS[model] = _replay_is_exact(model)
    return _REPLAYS[model]


def _replay_is_exact(model: Any) -> bool:
    """One probe: two copies of a 2-row batch resumed at block 1 from block 0's kept output,
    logits at the answer positions only, against the full forward."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0 or getattr(model, "unembed", None) is None:
        return False
    d_vocab = max(int(getattr(getattr(model, "cfg", None), "d_vocab", 2) or 2), 2)
    device = model_device(model)
    tokens = (torch.arange(10, device=device) * 7 + 1).remainder(d_vocab).view(2, 5)
    pos = torch.tensor([4, 2], device=device)
    rows = torch.arange(2, device=device)
    try:
        with torch.no_grad():
            with _recording(model, {0}) as outputs:
                full = model(tokens)[rows, pos]
            prefix = Prefix(outputs, 2)
            with _answers_only(model, pos.repeat(2)), _skipping(model, prefix, 1, 2):
                tail = model(tokens.repeat(2, 1))
    except Exception:  # any failure to replay means: run this model in full
        return False
    if tail.shape[:2] != (4, 1):
        return False
    want, got = widen(full.repeat(2, 1)), widen(tail[:, 0])
    return bool((got - want).abs().max() <= 1e-4 * max(float(want.abs().max()), 1.0))


@contextmanager
def _recording(model: Any, layers: Iterable[int]) -> Iterator[dict[int, Any]]:
    """Keep each listed block's output (detached) from the forwards run inside the block.

    Module hooks on the blocks, removed on exit (on error too).
    """
    store: dict[int, Any] = {}
    handles = []

    def keeper(layer: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            store[layer] = _detached(output)

        return hook

    try:
        for layer in sorted(set(layers)):
            handles.append(model.blocks[layer].register_forward_hook(keeper(layer)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _detached(output: Any) -> Any:
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detached(x) for x in output)
    return output


def _repeated(output: Any, rows: int, copies: int) -> Any:
    """A kept block output for ``copies`` copies of the batch (copy-major), freshly made:
    the run may change it in place without touching the kept one."""
    if isinstance(output, Tensor):
        if output.dim() > 0 and output.shape[0] == rows:
            return output.repeat(copies, *([1] * (output.dim() - 1)))
        return output.clone()
    if isinstance(output, tuple):
        return tuple(_repeated(x, rows, copies) for x in output)
    return output


@contextmanager
def _swapped_forward(modules: Sequence[Any], forward: Callable[..., Any]) -> Iterator[None]:
    """Each module's forward replaced by ``forward`` for the duration (restored on exit,
    also where something else had replaced it before)."""
    # object.__setattr__: a bridge component forwards attribute writes to the module it wraps
    saved = [m.__dict__.get("forward") for m in modules]
    try:
        for m in modules:
            object.__setattr__(m, "forward", forward)
        yield
    finally:
        for m, before in zip(modules, saved, strict=True):
            if before is None:
                m.__dict__.pop("forward", None)
            else:
                object.__setattr__(m, "forward", before)


@contextmanager
def _skipping(model: Any, prefix: Prefix, start: int, copies: int) -> Iterator[None]:
    """Blocks below ``start`` do not compute: each returns the base run's output of block
    start − 1 for ``copies`` copies of the batch, so block ``start`` reads the base run's
    residual stream."""
    start = min(start, len(model.blocks))
    if start <= 0:
        yield
        return
    entry = _repeated(prefix.outputs[start - 1], prefix.rows, copies)

    def handed_on(*args: Any, **kwargs: Any) -> Any:
        return entry

    with _swapped_forward(list(model.blocks)[:start], handed_on):
        yield


@contextmanager
def _answers_only(model: Any, pos: Tensor) -> Iterator[None]:
    """The unembedding maps each row's answer position only: logits ``[rows, 1, vocab]``
    (the unembedding is a large share of a forward where the vocabulary is large)."""
    unembed = model.unembed
    own = unembed.forward

    def at_answers(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        rows = torch.arange(x.shape[0], device=x.device)
        return own(x[rows, pos.to(x.device)].unsqueeze(1), *args, **kwargs)

    with _swapped_forward([unembed], at_answers):
        yield


#: faithfulness is refused when |L_clean − L_corrupt| is below this share of the metric's
#: typical size (the mean over pairs of max(|L_clean,i|, |L_corrupt,i|)): F would then divide
#: by a number of the order of the metric's own rounding and sampling noise
GAP_REFUSE = 0.01
#: below this share (but above GAP_REFUSE) faithfulness is reported with a warning: any error
#: in L_circuit is amplified by more than 1 / GAP_WARN = 10×
GAP_WARN = 0.1
#: estimates (AtP, AtP*, EAP) further than this share of the largest exact effect from exact
#: patching are warned about: the model is strongly non-linear along the patch
NONLINEAR = 0.5


def far_from_exact(estimate: Tensor, exact: Tensor) -> tuple[float, int]:
    """(largest |estimate − exact| over the largest |exact|, how many of the effects above a
    tenth of the largest have the wrong sign): how far estimates are from exact patching.

    Example:
        >>> far_from_exact(torch.tensor([1.0, -0.5]), torch.tensor([1.0, 0.5]))
        (1.0, 1)
    """
    scale = float(exact.abs().max()) if exact.numel() else 0.0
    if scale == 0.0:
        return 0.0, 0
    gap = float((estimate.double() - exact.double()).abs().max()) / scale
    big = exact.abs() > 0.1 * scale
    return gap, int(((estimate * exact < 0) & big).sum())


@dataclass(frozen=True)
class MetricGap:
    """The metric's mean on the clean and the corrupt prompts, and its typical size.

    ``ratio`` = |clean − corrupt| / scale with scale = mean_i max(|L_clean,i|, |L_corrupt,i|)
    is dimensionless, so one tolerance serves every metric: it is near 0 when the corrupt
    prompts barely move the metric, or when pairs moving it in opposite directions cancel.

    Example:
        >>> MetricGap(clean=2.0, corrupt=1.999, scale=2.0).refusal is not None
        True
        >>> MetricGap(clean=2.0, corrupt=-1.0, scale=2.0).ratio
        1.5
    """

    clean: float
    corrupt: float
    scale: float

    @property
    def gap(self) -> float:
        return self.clean - self.corrupt

    @property
    def ratio(self) -> float:
        return abs(self.gap) / self.scale if self.scale > 0 else 0.0

    @property
    def refusal(self) -> str | None:
        """Why faithfulness is not computed, or None when the gap is large enough."""
        if self.ratio >= GAP_REFUSE:
            return None
        return (
            f"faithfulness not computed: the metric's clean − corrupt gap ({self.gap:.3g}) is "
            f"below {GAP_REFUSE:.0%} of its typical size ({self.scale:.3g}), so F would divide "
            "by noise; use corrupt prompts that change the behaviour"
        )

    @property
    def caution(self) -> str | None:
        """A warning for a small but usable gap, else None (see :data:`GAP_WARN`)."""
        if self.refusal is not None or self.ratio >= GAP_WARN:
            return None
        return (
            f"the metric's clean − corrupt gap ({self.gap:.3g}) is only {self.ratio:.0%} of its "
            f"typical size ({self.scale:.3g}); faithfulness amplifies any error in the circuit's "
            f"metric {1 / self.ratio:.0f}×, read it with care"
        )

    def warn(self) -> None:
        """Emit the refusal or the caution as a :class:`~circuitgraph.errors.CircuitGraphWarning`."""
        text = self.refusal or self.caution
        if text is not None:
            warnings.warn(text, CircuitGraphWarning, stacklevel=3)


def metric_gap(
    model: Any, pairs: PromptPairs, metric: str | Metric = "logit_diff", batch_size: int = 32
) -> MetricGap:
    """The metric on the clean and corrupt prompts (one forward each per pair).

    Example:
        >>> metric_gap(model, pairs, "logit_diff").ratio > 0.01  # doctest: +SKIP
        True
    """
    pairs, resolved, opts = resolve(model, pairs, metric, batch_size)
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in opts.batches(pairs):
        ctx = base_run(model, batch, resolved, "noising")
        with torch.no_grad():
            corrupt, _ = run_metric(model, batch.corrupt, batch, resolved, ctx.reference)
        sums += gap_sums(ctx.base_metric, corrupt)
    clean, corrupt_mean, scale = (opts.reduce(sums) / len(pairs)).tolist()
    return MetricGap(clean, corrupt_mean, scale)


def gap_sums(clean: Tensor, corrupt: Tensor) -> Tensor:
    """[Σ L_clean, Σ L_corrupt, Σ max(|L_clean|, |L_corrupt|)] over a batch, in float64."""
    c, n = clean.double().cpu(), corrupt.double().cpu()
    return torch.stack([c.sum(), n.sum(), torch.maximum(c.abs(), n.abs()).sum()])


# --------------------------------------------------------------------------------------
# Gradient runs: one noise forward, one clean forward with gradient, many backwards
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one gradient run needs: hooks to read in both runs, gradients, layers to drop."""

    act_names: tuple[str, ...]
    clean_only: tuple[str, ...]
    grad_names: tuple[str, ...]
    drop_hooks: tuple[tuple[int, str], ...]  # (layer, hook) of each residual write to cut


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

    def hook(self, layer: int) -> HookFn:
        def cut(grad: Tensor, hook: Any) -> Tensor | None:
            return torch.zeros_like(grad) if self.layer == layer else None

        return cut


class _Recorder:
    """Forward and backward hooks of one batch: activations of the noise run, then of the
    clean run; the embedding leaf; gradients (each under the name asked for)."""

    def __init__(self) -> None:
        self.acts: dict[str, Tensor] = {}
        self.grads: dict[str, Tensor] = {}
        self.leaf: Tensor | None = None
        self.clean = False

    def act(self, name: str, clean_only: bool) -> HookFn:
        def hook(act: Tensor, hook: Any) -> None:
            if self.clean or not clean_only:
                self.acts[name] = act.detach()

        return hook

    def make_leaf(self, act: Tensor, hook: Any) -> Tensor | None:
        if not self.clean:
            return None
        self.leaf = act.detach().requires_grad_(True)
        return self.leaf

    def start_clean(self) -> dict[str, Tensor]:
        """Switch to the clean run; return the noise run's activations."""
        noise, self.acts, self.clean = self.acts, {}, True
        return noise


def clean_run(
    model: Any,
    batch: PromptPairs,
    metric: Metric,
    plan: Plan,
    mode: str,
    body: Callable[[BatchRun], Any],
) -> Any:
    """Run the noise forward, then the clean forward with gradient, and call ``body`` on it.

    ``batch`` is already oriented (for denoising the caller swaps clean and corrupt). Hooks
    stay attached while ``body`` takes its backward passes and are removed after, on error
    too. A detached copy of the embedding output is the only leaf that needs a gradient,
    so no parameter gradient is ever computed.
    """
    rec = _Recorder()
    dropper = _Dropper()
    fwd: list[tuple[str, HookFn]] = [(hooks.embed, rec.make_leaf)]
    fwd += [(n, rec.act(n, clean_only=False)) for n in plan.act_names]
    fwd += [(n, rec.act(n, clean_only=True)) for n in plan.clean_only]
    bwd: list[tuple[str, HookFn]] = [(n, keep(rec.grads, n, detach=False)) for n in plan.grad_names]
    bwd += [(name, dropper.hook(layer)) for layer, name in plan.drop_hooks]
    # one attachment for both runs (attaching costs the bridge more than a small model's
    # forward); the backward hooks take effect in the clean run only, the one with gradient
    with attached(model, fwd=fwd, bwd=bwd):
        with torch.no_grad():
            noise_logits = answer_logits(model(batch.corrupt), batch)
        noise = rec.start_clean()
        with torch.enable_grad():
            logits = answer_logits(model(batch.clean), batch)
            # KL compares with the clean distribution: this run's in noising, else the other.
            reference = clean_reference(
                model, batch, metric, logits if mode == "noising" else noise_logits
            )
            values = check_finite(widen(metric(logits, batch, reference)))
            assert rec.leaf is not None
            run = BatchRun(rec.acts, noise, values.sum(), rec.leaf, rec.grads, dropper)
            return body(run)
