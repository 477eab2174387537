"""The benchmark suite behind ``circuitgraph bench``: recall cost, speed, memory, scaling, peer.

:func:`run_bench` runs every part for a :class:`BenchConfig` and returns one JSON-ready dict;
:mod:`circuitgraph.bench.report` turns it into a table and plots. Parts:

* :mod:`~circuitgraph.bench.recall`: cost of verified recall per zoo model × task × kinds;
* :mod:`~circuitgraph.bench.speed`: speed and memory ratios, scaling;
* :mod:`~circuitgraph.bench.peer`: our EAP against TransformerLens's attribution patching.

Example:
    >>> results = run_bench(BenchConfig.quick())  # doctest: +SKIP
    >>> sorted(results)  # doctest: +SKIP
    ['config', 'machine', 'memory', 'peer', 'recall', 'scaling', 'seconds', 'speed']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from circuitgraph.bench.config import BIG, PARTS, BenchConfig, Say, default_models, machine

__all__ = ["BIG", "PARTS", "BenchConfig", "Say", "default_models", "machine", "run_bench"]


def run_bench(config: BenchConfig, say: Say | None = None) -> dict[str, Any]:
    """Run every part of the benchmark; returns the JSON-ready results.

    ``say`` gets one line per step (progress). Torch is set to ``config.threads`` threads.

    Example:
        >>> r = run_bench(BenchConfig.quick())  # doctest: +SKIP
        >>> r["speed"]["random:tiny-gpt2"]["ratios"]["atp"]  # doctest: +SKIP
    """
    import torch

    from circuitgraph.bench import parts
    from circuitgraph.errors import ConfigError

    torch.set_num_threads(config.threads)
    say = say or (lambda _line: None)
    if not config.models:
        config = replace(config, models=default_models())
    start = time.perf_counter()
    unknown = sorted(set(config.parts) - set(PARTS))
    if unknown:
        raise ConfigError(f"expected bench parts among {list(PARTS)} but got {unknown}")
    out: dict[str, Any] = {
        "config": asdict(config), "machine": machine(config.threads, config.device)
    }  # fmt: skip
    steps: list[tuple[str, Callable[[BenchConfig, Say], Any]]] = [
        ("recall", parts.recall_part), ("speed", parts.speed_part),
        ("memory", parts.memory_part), ("scaling", parts.scaling_part), ("peer", parts.peer_part),
    ]  # fmt: skip
    seconds: dict[str, float] = {}
    for name, fn in (step for step in steps if step[0] in config.parts):
        t = time.perf_counter()
        out[name] = fn(config, say)
        seconds[name] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    out["seconds"] = seconds
    return out
