"""The indirect-object-identification circuit of ``zoo:gpt2-4l``, found and drawn.

"When Mary and John went to the store , John gave a drink to" → " Mary": the model has to
find the name that is not repeated. The corrupt prompts replace the repeated subject with a
third name, so the metric measures how much the model relies on spotting the duplicate.
This walkthrough screens heads, their q/k/v inputs and MLPs with AtP*, verifies the top
ones exactly, attributes edges among them and draws the circuit.

    python examples/ioi_circuit.py [--out examples/out] [--n-pairs 64]
"""

from walkthrough import main

import circuitgraph as cg

if __name__ == "__main__":
    config = cg.DiscoverConfig(keep_nodes=16, edge_top_n=16, verify="auto", verify_top_k=10)
    main(__doc__, "zoo:gpt2-4l", "ioi", config)
