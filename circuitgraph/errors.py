"""The one error hierarchy of circuitgraph.

Every error a user can cause is a :class:`CircuitGraphError` whose message is one sentence
saying what was expected, what was received and how to fix it. The CLI prints that
sentence and exits with status 1, without a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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


class ToolMissingError(ExportError):
    """A program an output needs (Graphviz ``dot``) is not installed: an expected skip."""


class CircuitGraphWarning(UserWarning):
    """Something the user should know that does not stop the run (degenerate pairs, a
    clean − corrupt gap too small for faithfulness, non-finite values written as null).

    The CLI prints each as one ``warning:`` line on stderr and lists them under
    ``warnings`` in its ``--json`` summary.
    """


@contextlib.contextmanager
def malformed(what: str, where: object) -> Iterator[None]:
    """Turn what a reader raises on a document of the wrong shape (a missing key, a string
    where a list belongs) into one :class:`DataError` sentence naming the document.

    Example:
        >>> try:
        ...     with malformed("circuit JSON", "c.json"):
        ...         {}["nodes"]
        ... except DataError as err:
        ...     print(err)
        expected a circuit JSON in c.json but its content is malformed (the key 'nodes' is missing); check the file, or write it again with circuitgraph
    """
    try:
        yield
    except CircuitGraphError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DataError(
            f"expected a {what} in {where} but its content is malformed ({_describe(exc)}); "
            "check the file, or write it again with circuitgraph"
        ) from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"the key {exc.args[0]!r} is missing" if exc.args else "a key is missing"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
