"""How well a model does a built-in task, measured through the public path.

``make_pairs`` → the bridge's forward on the clean prompts → ``logit_diff`` at each pair's
answer position. The training script writes these figures into the model card and the zoo
tests recompute them from the committed weights.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.tasks.builtin import Task, make_pairs
from circuitgraph.tasks.metrics import answer_logits, get_metric

__all__ = ["EVAL_N", "EVAL_SEED", "evaluate", "logit_diffs"]

#: held-out pairs: the training corpus draws from ``random.Random(training seed)`` streams,
#: evaluation from this seed's task generator
EVAL_SEED = 10_000
EVAL_N = 500


def logit_diffs(
    model: Any,
    tokenizer: Any,
    task: str | Task,
    n: int,
    seed: int,
    batch_size: int = 128,
    bos: bool | None = None,
) -> Float[Tensor, " n"]:
    """logit(answer) − logit(wrong) on each clean prompt of ``n`` generated pairs (``bos`` as
    in :func:`~circuitgraph.tasks.builtin.make_pairs`).

    Example:
        >>> model, info = load_model("zoo:attn-only-2l")  # doctest: +SKIP
        >>> logit_diffs(model, model.tokenizer, "induction", 8, seed=0).shape  # doctest: +SKIP
        torch.Size([8])
    """
    pairs = make_pairs(task, tokenizer, n, seed=seed, max_len=int(model.cfg.n_ctx), bos=bos)
    metric = get_metric("logit_diff")
    device = next(iter(model.parameters())).device
    out = []
    with torch.no_grad():
        for batch in pairs.batches(batch_size):
            batch = batch.to(device)
            logits = model(batch.clean)
            out.append(metric(answer_logits(logits, batch), batch).float().cpu())
    return torch.cat(out)


def evaluate(
    model: Any,
    tokenizer: Any,
    task: str | Task,
    n: int = EVAL_N,
    seed: int = EVAL_SEED,
    bos: bool | None = None,
) -> tuple[float, float]:
    """(share of pairs with logit_diff > 0, mean logit_diff) on ``n`` held-out pairs.

    Example:
        >>> model, info = load_model("zoo:gpt2-4l")  # doctest: +SKIP
        >>> accuracy, mean_diff = evaluate(model, model.tokenizer, "ioi")  # doctest: +SKIP
    """
    diffs = logit_diffs(model, tokenizer, task, n, seed, bos=bos)
    return float((diffs > 0).float().mean()), float(diffs.mean())
