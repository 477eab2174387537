"""Shared by the walkthroughs: find a circuit on a zoo model, print it, draw it."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuitgraph import load_model
from circuitgraph.errors import ExportError
from circuitgraph.export import render, write_json
from circuitgraph.pipeline import DiscoverConfig, discover_circuit
from circuitgraph.tasks import make_pairs


def main(doc: str, model_spec: str, task: str, config: DiscoverConfig) -> None:
    """Parse ``--out``/``--n-pairs``, run the pipeline, print the circuit, write JSON and PNG."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/out"))
    ap.add_argument("--n-pairs", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model, _ = load_model(model_spec)
    pairs = make_pairs(task, model.tokenizer, args.n_pairs, seed=0)
    found = discover_circuit(model, pairs, config, attrs={"model": model_spec, "task": task})

    print(found.verification.table() if found.verification else "")
    g = found.circuit.graph
    print(
        f"\ncircuit: {g['n_nodes']} nodes, {g['n_edges']} edges, faithfulness {g['faithfulness']:.3f}"
    )
    for u, v, d in sorted(found.circuit.edges(data=True), key=lambda e: -e[2].get("score", 0)):
        if not d.get("internal"):
            exact = d.get("exact", float("nan"))
            print(f"  {u + '->' + v:<24} estimate {d['signed']:+8.3f}  exact {exact:+8.3f}")
    write_json(found.circuit, args.out / f"{task}.json")
    try:
        render(found.circuit, args.out / f"{task}.png", format="png")
        print(f"picture: {args.out / f'{task}.png'}")
    except ExportError as err:
        print(err)
