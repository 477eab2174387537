"""Exact activation patching: time per patched node / time of one bare forward (target ≤ 1.2).

Both timings are taken in the same run, on the same batch, alternately, keeping the minimum
over repeats. The per-node time is the whole sweep's time (its clean and corrupt runs
included) divided by the number of nodes. One thread by default, timed by the process's
CPU time, which waiting for a busy shared core does not inflate. A thin wrapper around
:func:`circuitgraph.bench.speed.sweep_timings` (``circuitgraph bench`` runs it too).

    python -m benchmarks.bench_patching [--shapes tiny-gpt2 gpt2-small] [--pairs 8] [--seq 16]
"""

from __future__ import annotations

import argparse

import torch

from circuitgraph.bench.common import random_model, random_pairs
from circuitgraph.bench.speed import sweep_timings


def measure(shape: str, n_pairs: int, seq: int, repeats: int) -> dict[str, float]:
    model, info = random_model(shape)
    t = sweep_timings(model, info, random_pairs(info.d_vocab, n_pairs, seq), repeats)
    return {"nodes": t["nodes"], "bare_fwd_s": t["bare_fwd"], "per_node_s": t["per_node"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny-gpt2", "gpt2-small"])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.pairs} x {args.seq}"
    )
    print(
        f"{'model':<16} {'nodes':>6} {'bare fwd':>10} {'per node':>10} {'ratio':>7}  (target <= 1.2)"
    )
    for shape in args.shapes:
        r = measure(shape, args.pairs, args.seq, args.repeats)
        ratio = r["per_node_s"] / r["bare_fwd_s"]
        print(
            f"{shape:<16} {int(r['nodes']):>6} {r['bare_fwd_s'] * 1e3:>8.2f}ms "
            f"{r['per_node_s'] * 1e3:>8.2f}ms {ratio:>7.3f}"
        )


if __name__ == "__main__":
    main()
