"""Edge attribution over all edges: speed and memory against the bare model.

Prints, for each model shape, in one run on the same batch:

* ``eap`` time over all edges / (2 forward + 1 backward of the bare model)  (target ≤ 1.5);
  the bare backward takes activation gradients only (what EAP needs; cheaper than
  ``loss.backward()`` with parameter gradients, so the stricter baseline). Timed alternately,
  minimum over repeats, one thread, process CPU time by default;
* peak memory of ``eap`` / peak of a plain forward + backward with parameter gradients
  (target ≤ 2): the process's peak resident set size (VmHWM, reset once the model and batch
  are loaded) above its size at that moment, each measured in a fresh process (Linux only).

A thin wrapper around :mod:`circuitgraph.bench.speed` (``circuitgraph bench`` runs it too).

    python -m benchmarks.bench_edges [--shapes tiny-gpt2 gpt2-small] [--pairs 8] [--seq 32]
"""

from __future__ import annotations

import argparse

import torch

from circuitgraph.bench.common import random_dir, random_model, random_pairs
from circuitgraph.bench.speed import eap_timings, memory_ratio


def timings(shape: str, n_pairs: int, seq: int, repeats: int) -> dict[str, float]:
    model, info = random_model(shape)
    t = eap_timings(model, info, random_pairs(info.d_vocab, n_pairs, seq), repeats)
    return {"edges": t["edges"], "bare": t["bare_1"], "eap": t["eap"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny-gpt2", "gpt2-small"])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.pairs} x {args.seq}"
    )
    head = f"{'model':<16} {'edges':>7} {'2f+1b':>9} {'eap':>9} {'time':>6} {'mem':>6}"
    print(head + "   (targets: time <= 1.5, mem <= 2)")
    for shape in args.shapes:
        t = timings(shape, args.pairs, args.seq, args.repeats)
        mem = memory_ratio(random_dir(shape), args.pairs, args.seq)
        print(
            f"{shape:<16} {int(t['edges']):>7} {t['bare'] * 1e3:>7.1f}ms "
            f"{t['eap'] * 1e3:>7.1f}ms {t['eap'] / t['bare']:>6.2f} {mem['ratio']:>6.2f}"
            f"   (peak MB: bare {mem['bare_mb']:.0f}, eap {mem['eap_mb']:.0f})"
        )


if __name__ == "__main__":
    main()
