"""Shared by the walkthroughs: find a circuit on a zoo model, print it, draw it."""

from __future__ import annotations

import argparse
from pathlib import Path

import circuitgraph as cg


def main(doc: str, model_spec: str, task: str, config: cg.DiscoverConfig) -> None:
    """Parse ``--out``/``--n-pairs``, run the pipeline, print the circuit, write JSON and PNG."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/out"))
    ap.add_argument("--n-pairs", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model, _ = cg.load_model(model_spec)
    pairs = cg.make_pairs(task, model.tokenizer, args.n_pairs, seed=0)
    found = cg.discover(model, pairs, config, attrs={"model": model_spec, "task": task})

    print(found.verification.table() if found.verification else "")
    g = found.circuit.graph
    print(
        f"\ncircuit: {g['n_nodes']} nodes, {g['n_edges']} edges, faithfulness {g['faithfulness']:.3f}"
    )
    for u, v, d in sorted(found.circuit.edges(data=True), key=lambda e: -e[2].get("score", 0)):
        if not d.get("internal"):
            exact = d.get("exact", float("nan"))
            print(f"  {u + '->' + v:<24} estimate {d['signed']:+8.3f}  exact {exact:+8.3f}")
    cg.write(found.circuit, args.out / f"{task}.json")
    try:
        cg.write(found.circuit, args.out / f"{task}.png")
        print(f"picture: {args.out / f'{task}.png'}")
    except cg.ExportError as err:
        print(err)
