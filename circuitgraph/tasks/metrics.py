"""Metrics: one scalar per prompt pair, read from the logits at the pair's answer position.

Every metric has the same signature ``fn(logits, batch, reference) -> [batch]`` where
``logits`` are the answer-position logits ``[batch, vocab]`` and ``reference`` the clean
run's answer-position log-probabilities (only ``kl`` reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.errors import ConfigError, MetricError
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["METRICS", "Metric", "answer_logits", "check_finite", "get_metric", "widen"]

MetricFn = Callable[[Float[Tensor, "b v"], PromptPairs, "Float[Tensor, 'b v'] | None"], Tensor]


@dataclass(frozen=True)
class Metric:
    """A named metric. ``needs_reference``: it compares with the clean distribution;
    ``compares_wrong``: it reads the wrong answer (so answer = wrong makes it constant)."""

    name: str
    fn: MetricFn
    description: str
    needs_reference: bool = False
    compares_wrong: bool = False

    def __call__(
        self,
        logits: Float[Tensor, "b v"],
        batch: PromptPairs,
        reference: Float[Tensor, "b v"] | None = None,
    ) -> Float[Tensor, " b"]:
        if self.needs_reference and reference is None:
            raise MetricError(f"the {self.name} metric needs the clean run's log-probabilities")
        return self.fn(logits, batch, reference)


def answer_logits(logits: Float[Tensor, "b t v"], batch: PromptPairs) -> Float[Tensor, "b v"]:
    """The logits at each pair's own answer position.

    Example:
        >>> import torch
        >>> b = PromptPairs.from_tokens([[1, 2], [1, 2]], [[1, 3], [1, 3]], [4, 4], [5, 5])
        >>> answer_logits(torch.zeros(2, 2, 7), b).shape
        torch.Size([2, 7])
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    pos = batch.answer_pos.to(logits.device)
    if logits.shape[0] != len(batch):
        # An expanded batch (several patched copies of the pairs, copy-major).
        pos = pos.repeat(logits.shape[0] // len(batch))
    return logits[rows, pos]


def widen(x: Tensor) -> Tensor:
    """``x`` in at least float32: half-precision logits lose the metric, float64 stays float64.

    Example:
        >>> widen(torch.zeros(2, dtype=torch.bfloat16)).dtype, widen(torch.zeros(2, dtype=torch.float64)).dtype
        (torch.float32, torch.float64)
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _pick(x: Tensor, ids: Tensor) -> Tensor:
    ids = ids.to(x.device)
    if x.shape[0] != ids.shape[0]:
        ids = ids.repeat(x.shape[0] // ids.shape[0])
    return x.gather(-1, ids[:, None]).squeeze(-1)


def _logit_diff(logits: Tensor, batch: PromptPairs, _ref: Tensor | None) -> Tensor:
    return _pick(logits, batch.answer) - _pick(logits, batch.wrong)


def _logprob(logits: Tensor, batch: PromptPairs, _ref: Tensor | None) -> Tensor:
    return _pick(widen(logits).log_softmax(-1), batch.answer)


def _prob(logits: Tensor, batch: PromptPairs, _ref: Tensor | None) -> Tensor:
    return _pick(widen(logits).softmax(-1), batch.answer)


def _kl(logits: Tensor, batch: PromptPairs, ref: Tensor | None) -> Tensor:
    assert ref is not None
    logp = widen(logits).log_softmax(-1)
    if ref.shape[0] != logp.shape[0]:
        ref = ref.repeat(logp.shape[0] // ref.shape[0], 1)
    return (ref.exp() * (ref - logp)).sum(-1)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "logit_diff",
            _logit_diff,
            "logit(answer) - logit(wrong) at the answer position",
            compares_wrong=True,
        ),
        Metric("logprob", _logprob, "log-probability of the answer"),
        Metric("prob", _prob, "probability of the answer"),
        Metric("kl", _kl, "KL(clean || run) of the next-token distribution", needs_reference=True),
    )
}


def get_metric(name: str | Metric) -> Metric:
    """Look a metric up by name.

    Example:
        >>> get_metric("logit_diff").name
        'logit_diff'
    """
    if isinstance(name, Metric):
        return name
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(
            f"expected a metric among {sorted(METRICS)} but got {name!r}; pick one of those"
        ) from None


def check_finite(values: Tensor, what: str = "the metric") -> Tensor:
    """Raise a :class:`MetricError` if ``values`` has NaN or infinite entries."""
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise MetricError(
            f"expected finite values from {what} but {bad} of {values.numel()} are NaN or "
            "infinite; check the model's dtype (try --dtype float32) and the answer tokens"
        )
    return values
