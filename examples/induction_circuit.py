"""The induction circuit of ``zoo:attn-only-2l``, found from scratch and drawn.

The model was trained on sequences that repeat: predicting the token after an earlier
occurrence of the current token needs a previous-token head in layer 0 whose output a
layer-1 induction head reads through its key (K-composition). This walkthrough screens all
heads and their q/k/v inputs with AtP*, verifies the top ones exactly, attributes edges
among them and draws the circuit.

    python examples/induction_circuit.py [--out examples/out] [--n-pairs 64]
"""

from walkthrough import main

import circuitgraph as cg

if __name__ == "__main__":
    config = cg.DiscoverConfig(keep_nodes=12, edge_top_n=12, verify="auto", verify_top_k=8)
    main(__doc__, "zoo:attn-only-2l", "induction", config)
