"""The registries of node and edge estimators, and the one contract they share.

Every estimator is a function registered under a method name::

    node estimator(model, pairs, nodes, metric, opts, **options) -> NodeScores
    edge estimator(model, pairs, candidates, metric, opts, **options) -> EdgeScores

``pairs`` are already on the model's device, ``metric`` is a resolved
:class:`~circuitgraph.tasks.metrics.Metric` and ``opts`` a
:class:`~circuitgraph.run.RunOptions` (batch size, mode, progress): the public entry points
(:func:`~circuitgraph.attribution.attribute_nodes`, :func:`~circuitgraph.attribution.attribute_edges`)
resolve them once. ``options`` are the method's own keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from circuitgraph.errors import ConfigError

__all__ = ["EDGE_ESTIMATORS", "ESTIMATORS", "Level", "lookup", "method_names", "register"]

Level = Literal["node", "edge"]
Estimator = Callable[..., Any]

#: node method name → estimator
ESTIMATORS: dict[str, Estimator] = {}
#: edge method name → estimator
EDGE_ESTIMATORS: dict[str, Estimator] = {}
_TABLES: dict[str, dict[str, Estimator]] = {"node": ESTIMATORS, "edge": EDGE_ESTIMATORS}
_WHAT = {"node": "a node-attribution method", "edge": "an edge method"}


def _table(level: str) -> dict[str, Estimator]:
    if level not in _TABLES:
        raise ConfigError(f"expected an estimator level among {sorted(_TABLES)} but got {level!r}")
    return _TABLES[level]


def register(name: str, level: Level = "node") -> Callable[[Estimator], Estimator]:
    """File the decorated function as the ``level`` estimator called ``name``.

    Example:
        >>> @register("my-method")  # doctest: +SKIP
        ... def my_method(model, pairs, nodes, metric, opts, **options):
        ...     ...
    """
    table = _table(level)

    def add(fn: Estimator) -> Estimator:
        table[name] = fn
        return fn

    return add


def lookup(name: str, level: Level = "node") -> Estimator:
    """The estimator registered as ``name``; an unknown name is a one-sentence error.

    Example:
        >>> lookup("atp*").__name__  # doctest: +SKIP
        'atp_star'
    """
    table = _table(level)
    try:
        return table[name]
    except KeyError:
        raise ConfigError(
            f"expected {_WHAT[level]} among {sorted(table)} but got {name!r}; pick one of those"
        ) from None


def method_names(level: Level = "node") -> list[str]:
    """The registered method names of a level, sorted.

    Example:
        >>> isinstance(method_names("edge"), list)
        True
    """
    return sorted(_table(level))
