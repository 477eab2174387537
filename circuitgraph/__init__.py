"""circuitgraph: edge-level circuit discovery for transformer language models.

One import is enough for the whole pipeline::

    import circuitgraph as cg

    model, info = cg.load_model("zoo:attn-only-2l")
    pairs = cg.make_pairs("induction", model.tokenizer, n=64, seed=0)
    nodes = cg.attribute_nodes(model, pairs, "logit_diff", method="atp*")
    check = cg.verify_nodes(model, pairs, nodes, k=10)
    edges = cg.attribute_edges(model, pairs, "logit_diff", "eap", cg.edge_candidates(info, nodes, keep=20))
    circuit = cg.build_circuit(edges, nodes, top_n=20)
    cg.write(circuit, "circuit.json")

Names are loaded on first use, so ``import circuitgraph`` (and the command line's
``--help``) does not import torch; importing has no other side effect.

Example:
    >>> import circuitgraph as cg
    >>> cg.Node.parse("a3.h5<q>").kind
    'q'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → the module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "CircuitGraphError": "circuitgraph.errors",
    "CircuitGraphWarning": "circuitgraph.errors",
    "ConfigError": "circuitgraph.errors",
    "DataError": "circuitgraph.errors",
    "ExportError": "circuitgraph.errors",
    "MetricError": "circuitgraph.errors",
    "ModelLoadError": "circuitgraph.errors",
    "ModelStateError": "circuitgraph.errors",
    "ToolMissingError": "circuitgraph.errors",
    # models, nodes, data
    "ModelInfo": "circuitgraph.model",
    "load_model": "circuitgraph.model",
    "Node": "circuitgraph.nodes",
    "Edge": "circuitgraph.nodes",
    "enumerate_nodes": "circuitgraph.nodes",
    "PromptPairs": "circuitgraph.tasks",
    "TextPair": "circuitgraph.tasks",
    "get_metric": "circuitgraph.tasks",
    "load_pairs": "circuitgraph.tasks",
    "make_pairs": "circuitgraph.tasks",
    "tokenize_pairs": "circuitgraph.tasks",
    # scores, exact patching
    "NodeScores": "circuitgraph.scores",
    "EdgeScores": "circuitgraph.scores",
    "patch_nodes": "circuitgraph.patching",
    "patch_edges": "circuitgraph.patching",
    "evaluate_circuit": "circuitgraph.patching",
    "evaluate_circuits": "circuitgraph.patching",
    "faithfulness_curve": "circuitgraph.patching",
    # MIB's integrated faithfulness scores
    "MIB_FRACTIONS": "circuitgraph.faithfulness",
    "MIBScores": "circuitgraph.faithfulness",
    "cmd": "circuitgraph.faithfulness",
    "cpr": "circuitgraph.faithfulness",
    "mib_scores": "circuitgraph.faithfulness",
    # attribution
    "attribute_nodes": "circuitgraph.attribution",
    "attribute_edges": "circuitgraph.attribution",
    "edge_candidates": "circuitgraph.attribution",
    "verify_nodes": "circuitgraph.attribution",
    "diagnose": "circuitgraph.attribution",
    "method_names": "circuitgraph.attribution",
    # circuits and files
    "build_circuit": "circuitgraph.graph",
    "circuit_edges": "circuitgraph.graph",
    "write": "circuitgraph.export",
    "read": "circuitgraph.export",
    # can this model's numbers be trusted?
    "check": "circuitgraph.selfcheck",
    "Verdict": "circuitgraph.selfcheck",
    # the whole pipeline
    "discover": "circuitgraph.pipeline",
    "DiscoverConfig": "circuitgraph.pipeline",
    "Discovery": "circuitgraph.pipeline",
}

__all__ = [
    "MIB_FRACTIONS",
    "CircuitGraphError",
    "CircuitGraphWarning",
    "ConfigError",
    "DataError",
    "DiscoverConfig",
    "Discovery",
    "Edge",
    "EdgeScores",
    "ExportError",
    "MIBScores",
    "MetricError",
    "ModelInfo",
    "ModelLoadError",
    "ModelStateError",
    "Node",
    "NodeScores",
    "PromptPairs",
    "TextPair",
    "ToolMissingError",
    "Verdict",
    "__version__",
    "attribute_edges",
    "attribute_nodes",
    "build_circuit",
    "check",
    "circuit_edges",
    "cmd",
    "cpr",
    "diagnose",
    "discover",
    "edge_candidates",
    "enumerate_nodes",
    "evaluate_circuit",
    "evaluate_circuits",
    "faithfulness_curve",
    "get_metric",
    "load_model",
    "load_pairs",
    "make_pairs",
    "method_names",
    "mib_scores",
    "patch_edges",
    "patch_nodes",
    "read",
    "tokenize_pairs",
    "verify_nodes",
    "write",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from circuitgraph.attribution import (
        attribute_edges,
        attribute_nodes,
        diagnose,
        edge_candidates,
        method_names,
        verify_nodes,
    )
    from circuitgraph.errors import (
        CircuitGraphError,
        CircuitGraphWarning,
        ConfigError,
        DataError,
        ExportError,
        MetricError,
        ModelLoadError,
        ModelStateError,
        ToolMissingError,
    )
    from circuitgraph.export import read, write
    from circuitgraph.faithfulness import MIB_FRACTIONS, MIBScores, cmd, cpr, mib_scores
    from circuitgraph.graph import build_circuit, circuit_edges
    from circuitgraph.model import ModelInfo, load_model
    from circuitgraph.nodes import Edge, Node, enumerate_nodes
    from circuitgraph.patching import (
        evaluate_circuit,
        evaluate_circuits,
        faithfulness_curve,
        patch_edges,
        patch_nodes,
    )
    from circuitgraph.pipeline import DiscoverConfig, Discovery, discover
    from circuitgraph.scores import EdgeScores, NodeScores
    from circuitgraph.selfcheck import Verdict, check
    from circuitgraph.tasks import (
        PromptPairs,
        TextPair,
        get_metric,
        load_pairs,
        make_pairs,
        tokenize_pairs,
    )


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562) and keep it."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'circuitgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
