"""The bench's CPU speed ratios (AtP, AtP*, EAP against the bare passes) and nothing else,
on the bench's models and batches: a quick way to compare two commits on one machine.

Runs against an older checkout too (it reads only what ``circuitgraph bench`` has had since
its first version), so machine and code can be told apart::

    python -m benchmarks.speed_ratios                       # this checkout
    git worktree add /tmp/old fdadc1b
    PYTHONPATH=/tmp/old python benchmarks/speed_ratios.py   # the same, on the old code

One thread, process CPU time, minimum of interleaved repeats (as ``circuitgraph bench``).
"""

from __future__ import annotations

import argparse

import torch

from circuitgraph.bench.common import load_spec
from circuitgraph.bench.parts import _batch, _is_big
from circuitgraph.bench.speed import atp_timings, eap_timings

try:
    from circuitgraph.bench.config import BenchConfig, default_models
except ImportError:  # before the bench's configuration had a module of its own
    from circuitgraph.bench import BenchConfig, default_models  # type: ignore[attr-defined,no-redef]


def ratios(spec: str, config: BenchConfig) -> dict[str, float]:
    """AtP / (2f+1b), AtP* / (2f+(L+1)b) and EAP / (2f+1b) of one model on its bench batch."""
    model, info = load_spec(spec)
    big = _is_big(spec)
    n, t = config.big_batch if big else config.speed_batch
    pairs = _batch(spec, model, info, n, t)
    repeats = config.big_repeats if big else config.repeats
    a = atp_timings(model, info, pairs, repeats, warm_up=not big)
    e = eap_timings(model, info, pairs, repeats, warm_up=not big)
    return {
        "atp": a["atp"] / a["bare_1"], "atp*": a["atp*"] / a["bare_L1"],
        "eap": e["eap"] / e["bare_1"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: the bench's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = BenchConfig()
    print(f"{'model':28s}   AtP   AtP*    EAP   (targets 1.3, 1.3, 1.5)")
    for spec in args.models or default_models():
        r = ratios(spec, config)
        print(f"{spec:28s} {r['atp']:5.2f}  {r['atp*']:5.2f}  {r['eap']:5.2f}", flush=True)


if __name__ == "__main__":
    main()
