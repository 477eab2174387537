"""The manifest that ``discover`` writes (the report itself comes from the library)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

PACKAGES = ("circuitgraph", "torch", "transformer-lens", "transformers", "networkx", "graphviz")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def manifest(model: str, source: str, config: dict[str, Any]) -> dict[str, Any]:
    """What produced the outputs: versions, model, data and every setting (seed included).

    No timestamps or timings: the same arguments and seed give the same files.
    """
    return {
        "schema": "circuitgraph.manifest/1",
        "command": "discover",
        "model": model,
        "data": source,
        "config": config,
        "versions": versions(),
    }
