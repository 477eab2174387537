"""Shared pieces of the benchmark scripts; they now live in :mod:`circuitgraph.bench.common`."""

from __future__ import annotations

from circuitgraph.bench.common import (
    SHAPES,
    bare_passes,
    clock,
    interleaved_min,
    random_gpt2,
    random_model,
    random_pairs,
)

__all__ = [
    "SHAPES",
    "bare_passes",
    "clock",
    "interleaved_min",
    "random_gpt2",
    "random_model",
    "random_pairs",
]
