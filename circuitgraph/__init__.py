"""circuitgraph: edge-level circuit discovery for transformer language models.

The public API is small; everything else lives in submodules.

Example:
    >>> import circuitgraph as cg
    >>> cg.Node.parse("a3.h5<q>").kind
    'q'
"""

from circuitgraph.errors import (
    CircuitGraphError,
    ConfigError,
    DataError,
    ExportError,
    MetricError,
    ModelLoadError,
    ModelStateError,
)
from circuitgraph.model import ModelInfo, load_model
from circuitgraph.nodes import Edge, Node, enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.scores import NodeScores
from circuitgraph.tasks import PromptPairs, TextPair, get_metric, tokenize_pairs

__version__ = "0.1.0"

__all__ = [
    "CircuitGraphError",
    "ConfigError",
    "DataError",
    "Edge",
    "ExportError",
    "MetricError",
    "ModelInfo",
    "ModelLoadError",
    "ModelStateError",
    "Node",
    "NodeScores",
    "PromptPairs",
    "TextPair",
    "__version__",
    "enumerate_nodes",
    "get_metric",
    "load_model",
    "patch_nodes",
    "tokenize_pairs",
]
