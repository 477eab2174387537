"""The induction circuit of ``zoo:attn-only-2l``, found from scratch and drawn.

The model was trained on sequences that repeat: predicting the token after an earlier
occurrence of the current token needs a previous-token head in layer 0 whose output a
layer-1 induction head reads through its key (K-composition). This walkthrough screens all
heads and their q/k/v inputs with AtP*, verifies the top ones exactly, attributes edges
among them and draws the circuit.

    python examples/induction_circuit.py [--out examples/out] [--n-pairs 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from circuitgraph import load_model
from circuitgraph.discover import DiscoverConfig, discover_circuit
from circuitgraph.errors import ExportError
from circuitgraph.export import render, write_json
from circuitgraph.tasks import make_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/out"))
    ap.add_argument("--n-pairs", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model, _ = load_model("zoo:attn-only-2l")
    pairs = make_pairs("induction", model.tokenizer, args.n_pairs, seed=0)
    config = DiscoverConfig(keep_nodes=12, edge_top_n=12, verify_k=8, diagnose_subsets=50)
    found = discover_circuit(
        model, pairs, config, attrs={"model": "zoo:attn-only-2l", "task": "induction"}
    )

    print(found.verification.table() if found.verification else "")
    g = found.circuit.graph
    print(
        f"\ncircuit: {g['n_nodes']} nodes, {g['n_edges']} edges, faithfulness {g['faithfulness']:.3f}"
    )
    for u, v, d in sorted(found.circuit.edges(data=True), key=lambda e: -e[2].get("score", 0)):
        if not d.get("internal"):
            print(
                f"  {u + '->' + v:<24} estimate {d['signed']:+8.3f}  exact {d.get('exact', float('nan')):+8.3f}"
            )
    write_json(found.circuit, args.out / "induction.json")
    try:
        render(found.circuit, args.out / "induction.png", format="png")
        print(f"picture: {args.out / 'induction.png'}")
    except ExportError as err:
        print(err)


if __name__ == "__main__":
    main()
