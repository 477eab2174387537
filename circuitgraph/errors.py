"""The one error hierarchy of circuitgraph.

Every error a user can cause is a :class:`CircuitGraphError` whose message is one sentence
saying what was expected, what was received and how to fix it. The CLI prints that
sentence and exits with status 1, without a traceback.
"""

from __future__ import annotations


class CircuitGraphError(Exception):
    """Base class of every error circuitgraph raises on purpose."""


class ModelLoadError(CircuitGraphError):
    """A model spec could not be resolved or loaded."""


class ModelStateError(CircuitGraphError):
    """The model is in a state the method refuses (train mode, unsupported architecture)."""


class DataError(CircuitGraphError):
    """Prompt pairs, data files or tokenization are not what the method needs."""


class ConfigError(CircuitGraphError):
    """An unknown name (task, metric, method, node kind) or an invalid option value."""


class MetricError(CircuitGraphError):
    """The metric produced something unusable (wrong shape, NaN or infinite values)."""


class ExportError(CircuitGraphError):
    """A circuit could not be written in the requested format."""
