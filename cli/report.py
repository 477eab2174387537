"""The manifest that ``discover``, ``nodes`` and ``edges`` write (the report itself comes
from the library)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from . import guard

PACKAGES = ("circuitgraph", "torch", "transformer-lens", "transformers", "networkx", "graphviz")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_facts(model: Any, spec: str, pairs: Any, bos: bool) -> dict[str, Any]:
    """What a run ran on: pairs, device, dtype, BOS, the model files' SHA-256 (see
    :func:`circuitgraph.model.model_fingerprint`) and the command line."""
    from circuitgraph.model import model_fingerprint

    weight = next(iter(model.parameters()))
    return {
        "n_pairs": len(pairs),
        "device": str(weight.device),
        "dtype": str(weight.dtype).removeprefix("torch."),
        "bos": bos,
        "model_files": model_fingerprint(spec),
        "command_line": list(guard.ledger().argv),
    }


def manifest(
    model: str,
    source: str,
    config: dict[str, Any],
    run: dict[str, Any] | None = None,
    command: str = "discover",
) -> dict[str, Any]:
    """What produced the outputs: versions, model, data, every setting (seed included) and
    the run's facts (:func:`run_facts`).

    No timestamps or timings: the same arguments and seed give the same files.
    """
    return {
        "schema": "circuitgraph.manifest/1",
        "command": command,
        "model": model,
        "data": source,
        "config": config,
        **(run or {}),
        "versions": versions(),
    }
