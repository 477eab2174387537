"""The indirect-object-identification circuit of ``zoo:gpt2-4l``, found and drawn.

"When Mary and John went to the store, John gave a drink to" → " Mary": the model has to
find the name that is not repeated. The corrupt prompts replace the repeated subject with
a third name, so the metric measures how much the model relies on detecting the
duplicate. This walkthrough screens heads, their q/k/v inputs and MLPs with AtP*,
verifies the top ones exactly, attributes edges among them and draws the circuit.

    python examples/ioi_circuit.py [--out examples/out] [--n-pairs 64]
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

    model, _ = load_model("zoo:gpt2-4l")
    pairs = make_pairs("ioi", model.tokenizer, args.n_pairs, seed=0)
    config = DiscoverConfig(keep_nodes=16, edge_top_n=16, verify_k=10, diagnose_subsets=50)
    found = discover_circuit(model, pairs, config, attrs={"model": "zoo:gpt2-4l", "task": "ioi"})

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
    write_json(found.circuit, args.out / "ioi.json")
    try:
        render(found.circuit, args.out / "ioi.png", format="png")
        print(f"picture: {args.out / 'ioi.png'}")
    except ExportError as err:
        print(err)


if __name__ == "__main__":
    main()
