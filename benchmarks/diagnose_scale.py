"""How informative the false-negative bound is, design by design, at one budget.

Screen with AtP*, take its top ``--verified`` nodes as verified, then bound the rest with
the same number of forward passes per pair: the old fixed draw (Bonferroni over the nodes),
AtP*'s intersection-union test, plus the screen as control variate, plus rounds drawn until
the target (one group, or one per layer). Bounds are printed in the clean - corrupt gap's
units; ``--exact`` adds the true largest unverified effect (the exact sweep) to check them.

    python -m benchmarks.diagnose_scale [--model zoo:gpt2-4l] [--task ioi] [--per-position]
                                        [--pairs 16] [--budget 300] [--exact]
                                        [--designs rounds-layer ...] [--seeds 3]

``--budget 0`` gives each design the exhaustive sweep's cost (unverified nodes + 2), the
default of ``discover``. On SmolLM2 head nodes (720), without the sweep:

    python -m benchmarks.diagnose_scale --model zoo:smollm2-135m --kinds head,q,k,v \
        --pairs 8 --budget 0 --designs rounds-layer --seeds 1
"""

from __future__ import annotations

import argparse
import time

import torch

from circuitgraph import load_model
from circuitgraph.attribution import attribute_nodes, diagnose, diagnose_until
from circuitgraph.attribution.diagnostics import metric_gap
from circuitgraph.tasks import make_pairs

#: short names of the designs compared, in the order printed
DESIGNS = {
    "bonferroni": "fixed, Bonferroni (old)",
    "paper": "fixed, paper (IUT)",
    "cv": "fixed, paper + control variate",
    "rounds-one": "rounds, CV, one group",
    "rounds-layer": "rounds, CV, per layer",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="zoo:gpt2-4l")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--kinds", default="head,q,k,v,mlp")
    ap.add_argument("--per-position", action="store_true")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--verified", type=int, default=10)
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--target", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--exact", action="store_true")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.model, device="cpu")
    pairs = make_pairs(args.task, model.tokenizer, args.pairs, seed=1)
    screen = attribute_nodes(model, pairs, method="atp*", kinds=args.kinds.split(","),
                             per_position=args.per_position)  # fmt: skip
    rest = [n for n in screen.nodes if n not in set(screen.top_k(args.verified))]
    gap = metric_gap(model, pairs)
    truth = None
    if args.exact:
        exact = attribute_nodes(model, pairs, method="exact", nodes=rest)
        truth = float(exact.score.max())
    budget = args.budget if args.budget > 0 else len(rest) + 2.0
    m = int(budget) - 2
    print(
        f"{args.model} {args.task}: {len(screen)} nodes, {len(rest)} unverified, {len(pairs)} "
        f"pairs, gap {gap:.3f}, budget {budget:g} passes per pair, target {args.target} x gap"
        + (f"; true largest unverified effect {truth / abs(gap):.3f} x gap" if truth else "")
    )
    designs = {
        "fixed, Bonferroni (old)": lambda s: diagnose(model, pairs, rest, n_subsets=m, seed=s,
                                                     correction="bonferroni"),
        "fixed, paper (IUT)": lambda s: diagnose(model, pairs, rest, n_subsets=m, seed=s),
        "fixed, paper + control variate": lambda s: diagnose(model, pairs, rest, n_subsets=m,
                                                             seed=s, screen=screen),
        "rounds, CV, one group": lambda s: diagnose_until(model, pairs, rest, screen=screen,
            bound_target=args.target, gap=gap, budget=budget, groups="none", seed=s),
        "rounds, CV, per layer": lambda s: diagnose_until(model, pairs, rest, screen=screen,
            bound_target=args.target, gap=gap, budget=budget, groups="layer", seed=s),
    }  # fmt: skip
    for short in args.designs:
        name, run = DESIGNS[short], designs[DESIGNS[short]]
        start = time.perf_counter()
        got = [run(s) for s in range(args.seeds)]
        wall = time.perf_counter() - start
        rel = [d.bound / abs(gap) for d in got]
        cover = "" if truth is None else f"  covers {sum(d.bound >= truth for d in got)}/{len(got)}"
        print(
            f"  {name:<32} bound/gap {' '.join(f'{r:.3f}' for r in rel)}  passes "
            f"{' '.join(f'{d.forward_passes:g}' for d in got)}{cover}  ({wall:.0f} s)",
            flush=True,
        )
        if len(args.designs) == 1:
            for d in got:
                print(f"    {d.summary()}", flush=True)


if __name__ == "__main__":
    main()
