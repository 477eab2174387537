"""Recall of the exact top-10 within AtP*'s and AtP's top-20, per zoo model, task, node kind.

Ground truth is exact activation patching of every node (``patch_nodes``); the estimates
are ``attribute_nodes(method="atp*")`` and ``method="atp"`` on the same pairs.

    python -m benchmarks.recall_top [--models zoo:gpt2-4l zoo:llama-gqa-4l] [--pairs 64]
"""

from __future__ import annotations

import argparse

import torch

from circuitgraph import load_model
from circuitgraph.attribution import attribute_nodes
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.tasks import make_pairs
from circuitgraph.zoo import list_models

KINDS = {"heads (z, q, k, v)": ("head", "q", "k", "v"), "MLP neurons": ("neuron",)}


def recall(truth: list, estimate: list, k: int = 10, n: int = 20) -> float:
    """Share of the exact top-k found in the estimate's top-n.

    Example:
        >>> recall(["a", "b"], ["b", "c", "a"], k=2, n=2)
        0.5
    """
    return len(set(truth[:k]) & set(estimate[:n])) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["zoo:gpt2-4l", "zoo:llama-gqa-4l"])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = {f"zoo:{m.name}": m.tasks for m in list_models()}
    print(f"{'model':<18}{'task':<14}{'kind':<20}{'nodes':>6}{'atp* top-20':>13}{'atp top-20':>12}")
    for spec in args.models:
        model, info = load_model(spec, device="cpu")
        for task in tasks[spec]:
            pairs = make_pairs(task, model.tokenizer, args.pairs, seed=1)
            for label, kinds in KINDS.items():
                nodes = enumerate_nodes(info, kinds)
                truth = patch_nodes(model, pairs, nodes).ranking()
                row = [recall(truth, attribute_nodes(model, pairs, method=m, kinds=kinds).ranking())
                       for m in ("atp*", "atp")]  # fmt: skip
                print(
                    f"{spec:<18}{task:<14}{label:<20}{len(nodes):>6}{row[0]:>13.0%}{row[1]:>12.0%}"
                )


if __name__ == "__main__":
    main()
