"""One registry contract for node and edge estimators."""

from __future__ import annotations

import pytest

from circuitgraph.attribution import get_estimator, method_names
from circuitgraph.attribution.registry import lookup, register
from circuitgraph.errors import ConfigError


def test_both_levels_are_registered() -> None:
    assert {"atp", "atp+qkfix", "atp+graddrop", "atp*", "exact", "subsampling", "blocks",
            "random"} <= set(method_names("node"))  # fmt: skip
    assert {"eap", "eap-ig", "atp*", "exact"} <= set(method_names("edge"))
    assert get_estimator("exact").__name__ == "exact_nodes"
    assert get_estimator("exact", "edge").__name__ == "exact_edges"


def test_unknown_names_are_one_sentence() -> None:
    with pytest.raises(ConfigError, match=r"node-attribution method among \[.*'atp\*'"):
        get_estimator("atp**")
    with pytest.raises(ConfigError, match="edge method among"):
        get_estimator("atp+qkfix", "edge")
    with pytest.raises(ConfigError, match="level"):
        lookup("atp", "graph")  # type: ignore[arg-type]


def test_register_files_under_the_given_level() -> None:
    @register("test-only-method", "edge")
    def fn(*args, **kwargs):  # pragma: no cover - never called
        return None

    try:
        assert get_estimator("test-only-method", "edge") is fn
        with pytest.raises(ConfigError):
            get_estimator("test-only-method", "node")
    finally:
        from circuitgraph.attribution.registry import EDGE_ESTIMATORS

        del EDGE_ESTIMATORS["test-only-method"]
