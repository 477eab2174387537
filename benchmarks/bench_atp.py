"""AtP and AtP* cost relative to the bare model's passes (targets ≤ 1.3 each).

Reports, on the same batch and in the same run,

* AtP time / (2 forward + 1 backward of the bare model),
* AtP* time / (2 forward + (L+1) backward of the bare model),

where a bare backward is the gradient of the summed metric with respect to the embedding
output (activation gradients, no parameter gradients: what attribution needs). The bare
passes and the estimators are timed alternately and the minimum over repeats is kept, so
load from other processes affects both sides alike; with one thread the clock is the
process's CPU time, which waiting for a busy core does not inflate. A thin wrapper around
:func:`circuitgraph.bench.speed.atp_timings` (``circuitgraph bench`` runs it too).

    python -m benchmarks.bench_atp [--runs tiny-gpt2:2x12 gpt2-small:2x12] [--threads 1]

One thread by default: on shared cores idle OpenMP workers spin and make multi-threaded
timings meaningless (and the tiny models run fastest on one thread anyway).
"""

from __future__ import annotations

import argparse

import torch

from circuitgraph.bench.common import random_model, random_pairs
from circuitgraph.bench.speed import KINDS, atp_timings


def measure(shape: str, n_pairs: int, seq: int, repeats: int) -> dict[str, float]:
    model, info = random_model(shape)
    t = atp_timings(model, info, random_pairs(info.d_vocab, n_pairs, seq), repeats)
    return {"layers": info.n_layers, **t}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--runs", nargs="+", default=["tiny-gpt2:2x12", "tiny-gpt2:32x16", "gpt2-small:2x12"],
        help="SHAPE:PAIRSxSEQ for each row",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="repeats (x10 for tiny shapes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); nodes "
        f"{', '.join(KINDS)}; min of interleaved repeats; "
        f"{'process CPU time' if args.threads == 1 else 'wall clock'}"
    )
    print(
        f"{'model':<16}{'batch':>7}{'AtP':>9}{'2f+1b':>9}{'ratio':>7}{'AtP*':>9}"
        f"{'2f+(L+1)b':>11}{'ratio':>7}   (targets <= 1.3)"
    )
    for run in args.runs:
        shape, batch = run.split(":")
        n_pairs, seq = (int(x) for x in batch.split("x"))
        repeats = args.repeats * (10 if shape.startswith("tiny") else 1)
        r = measure(shape, n_pairs, seq, repeats)
        print(
            f"{shape:<16}{batch:>7}{_ms(r['atp'])}{_ms(r['bare_1'])}{r['atp'] / r['bare_1']:>7.3f}"
            f"{_ms(r['atp*'])}{_ms(r['bare_L1'], 11)}{r['atp*'] / r['bare_L1']:>7.3f}"
        )


def _ms(seconds: float, width: int = 9) -> str:
    return f"{seconds * 1e3:>{width - 2}.1f}ms"


if __name__ == "__main__":
    main()
