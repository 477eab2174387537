"""Exact interventions: nodes, edges and circuits (the ground truth of every estimate).

Example:
    >>> from circuitgraph.patching import patch_nodes, patch_edges, evaluate_circuit
"""

from circuitgraph.patching.circuits import (
    CircuitEval,
    evaluate_circuit,
    evaluate_circuits,
    faithfulness_curve,
)
from circuitgraph.patching.edges import check_edge, patch_edges
from circuitgraph.patching.nodes import (
    ABLATIONS,
    Ablation,
    mean_activations,
    patch_nodes,
    patch_sets,
)

__all__ = [
    "ABLATIONS",
    "Ablation",
    "CircuitEval",
    "check_edge",
    "evaluate_circuit",
    "evaluate_circuits",
    "faithfulness_curve",
    "mean_activations",
    "patch_edges",
    "patch_nodes",
    "patch_sets",
]
