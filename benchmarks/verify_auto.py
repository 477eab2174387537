"""Verification that knows when to stop, at scale: ``verify_auto`` on zoo MLP neurons (or
heads), against the exact sweep (cached, see ``benchmarks.misses``).

For each screen, top-k and seed: the forward passes spent (screen not included) against the
sweep's, how many of the exact top-k were verified, and whether the claim "no unverified
node reaches τ" held (checked against the sweep).

    python -m benchmarks.verify_auto [--model zoo:gpt2-4l] [--task ioi] [--kind "MLP neurons"]
                                     [--screens atp* atp*-mean] [--top 5 10] [--seeds 3]
                                     [--groups layer none] [--cache DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.misses import exact_cached
from benchmarks.recall_top import KINDS
from circuitgraph import load_model
from circuitgraph.attribution import attribute_nodes, verify_auto
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.tasks import make_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="zoo:gpt2-4l")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--kind", default="MLP neurons", choices=list(KINDS))
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--pair-seed", type=int, default=1)
    ap.add_argument("--screens", nargs="+", default=["atp*", "atp*-mean"])
    ap.add_argument("--top", nargs="+", type=int, default=[5, 10])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--groups", nargs="+", default=["layer", "none"])
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, info = load_model(args.model, device="cpu")
    pairs = make_pairs(args.task, model.tokenizer, args.pairs, seed=args.pair_seed)
    nodes = enumerate_nodes(info, KINDS[args.kind])
    key = f"{args.model}|{args.task}|{args.kind}|{args.pairs}|{args.pair_seed}"
    exact = exact_cached(model, pairs, nodes, key, args.cache).abs()
    order = exact.argsort(descending=True).tolist()
    print(
        f"{args.model} {args.task} {args.kind}: {len(nodes)} nodes, {len(pairs)} pairs; "
        f"exact top-12 |effects| {[round(float(exact[i]), 3) for i in order[:12]]}"
    )
    print(
        f"{'screen':<11}{'groups':<7}{'k':>3}{'seed':>5}{'passes':>8}{'sweep':>7}{'ratio':>7}"
        f"{'verified':>9}{'top-k':>7}{'held':>6}  stopped   bound / tau"
    )
    for screen_name in args.screens:
        screen = attribute_nodes(model, pairs, method=screen_name, nodes=nodes)
        fixed = {
            k: len(set(order[:k]) & set(nodes.index(n) for n in screen.top_k(k))) for k in args.top
        }
        for groups in args.groups:
            for k in args.top:
                for seed in range(args.seeds):
                    v = verify_auto(model, pairs, screen, top_k=k, groups=groups, seed=seed)
                    done = {nodes.index(n) for n in v.nodes}
                    rest = [i for i in range(len(nodes)) if i not in done]
                    held = v.stopped != "bounded" or float(exact[rest].max()) < (v.threshold or 0)
                    found = len(set(order[:k]) & done)
                    d = v.diagnosis
                    print(
                        f"{screen_name:<11}{groups:<7}{k:>3}{seed:>5}{v.forward_passes:>8.0f}"
                        f"{v.exhaustive_passes:>7.0f}{(v.exhaustive_passes or 0) / v.forward_passes:>7.2f}"
                        f"{len(v.nodes):>9}{found:>5}/{k:<2}{'yes' if held else 'NO':>5}  {v.stopped:<9} "
                        f"{d.bound if d else 0:.3g} / {v.threshold:.3g}   (fixed top-{k}: {fixed[k]}/{k})",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
