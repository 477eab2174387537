"""Where the screen misses: recall of the exact top-10 within each estimator's top-20, per zoo
model, task and node kind, with the exact sweep cached (it dominates the run time).

    python -m benchmarks.misses [--models zoo:gpt2-4l] [--pairs 64] [--methods atp atp* atp*-mean]
                                [--cache DIR] [--auto atp*]

``--auto SCREEN`` adds a column: the share of the exact top-10 among the nodes that
``verify_nodes(..., "auto", top_k=10)`` verified after that screen, and the sweep's cost
over its cost (the screen's own 2 forward + backward passes not counted).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from benchmarks.recall_top import KINDS, recall
from circuitgraph import load_model
from circuitgraph.attribution import attribute_nodes, verify_nodes
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.tasks import make_pairs
from circuitgraph.zoo import list_models


def exact_cached(model, pairs, nodes, key: str, cache: Path | None) -> torch.Tensor:
    """E I(n) of every node by the exact sweep, read from ``cache`` when it was run before."""
    path = None if cache is None else cache / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if path is not None and path.exists():
        return torch.load(path)
    signed = patch_nodes(model, pairs, nodes).signed
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(signed, path)
    return signed


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["zoo:gpt2-4l", "zoo:llama-gqa-4l"])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["atp", "atp*", "atp*-mean"])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--auto", default=None, help="screen verified with k='auto' (a column)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = {f"zoo:{m.name}": m.tasks for m in list_models()}
    auto = [f"{args.auto}+auto"] if args.auto else []
    print(
        f"{'model':<18}{'task':<14}{'kind':<20}{'nodes':>6}"
        + "".join(f"{m:>11}" for m in [*args.methods, *auto])
    )
    for spec in args.models:
        model, info = load_model(spec, device="cpu")
        for task in tasks[spec]:
            pairs = make_pairs(task, model.tokenizer, args.pairs, seed=args.seed)
            for label in args.kinds:
                nodes = enumerate_nodes(info, KINDS[label])
                key = f"{spec}|{task}|{label}|{args.pairs}|{args.seed}"
                exact = exact_cached(model, pairs, nodes, key, args.cache)
                truth = [nodes[i] for i in exact.abs().argsort(descending=True).tolist()]
                row = [
                    recall(truth, attribute_nodes(model, pairs, method=m, nodes=nodes).ranking())
                    for m in args.methods
                ]
                cells = [f"{r:>11.0%}" for r in row]
                if args.auto:
                    screen = attribute_nodes(model, pairs, method=args.auto, nodes=nodes)
                    v = verify_nodes(model, pairs, screen, "auto", top_k=10)
                    found = len(set(truth[:10]) & set(v.nodes)) / 10
                    ratio = (v.exhaustive_passes or 0) / v.forward_passes
                    cells.append(f"{found:>6.0%} ({ratio:.1f}x)")
                print(
                    f"{spec:<18}{task:<14}{label:<20}{len(nodes):>6}" + "".join(cells), flush=True
                )


if __name__ == "__main__":
    main()
