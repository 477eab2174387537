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

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["PARTS", "BenchConfig", "default_models", "machine", "run_bench"]

BIG = ("random:gpt2-small", "random:llama-gqa-small")
PARTS = ("recall", "speed", "memory", "scaling", "peer")


@dataclass(frozen=True)
class BenchConfig:
    """What ``circuitgraph bench`` measures, and on which batches.

    Batches are (pairs, sequence length). Zoo models use their first task's pairs for the
    speed ratios; random models random token pairs.
    """

    models: tuple[str, ...] = ()  # empty: every zoo model + the big random shapes
    recall_pairs: int = 16
    random_seeds: int = 5
    speed_batch: tuple[int, int] = (8, 16)
    big_batch: tuple[int, int] = (4, 16)
    repeats: int = 10  # small models; the big ones get big_repeats
    big_repeats: int = 2
    memory_batch: tuple[int, int] = (8, 32)
    memory_models: tuple[str, ...] | None = None  # None: the same as ``models``
    scaling_models: tuple[str, ...] = ("random:tiny-gpt2", "random:gpt2-6l", "random:gpt2-small")
    # pairs and length are swept on a model big enough for per-pair work to dominate
    scaling_sweep: str | None = "random:gpt2-6l"
    scaling_pairs: tuple[int, ...] = (2, 4, 8, 16, 32)
    scaling_seq: tuple[int, ...] = (8, 16, 32, 64)
    scaling_base: tuple[int, int] = (4, 16)
    scaling_repeats: int = 3
    peer_models: tuple[str, ...] = (
        "random:tiny-gpt2", "random:gpt2-small", "random:llama-gqa-small",
    )  # fmt: skip
    peer_batch: tuple[int, int] = (4, 12)
    peer_repeats: int = 2
    threads: int = 1
    device: str = "cpu"  # where the speed and memory parts run; the others stay on the CPU
    parts: tuple[str, ...] = PARTS
    recall_kinds: tuple[str, ...] = ("heads", "neurons")

    @classmethod
    def quick(cls) -> BenchConfig:
        """Tiny models, few pairs, one recall setting: checks the machinery in well under a minute.

        Example:
            >>> BenchConfig.quick().models
            ('zoo:attn-only-2l', 'random:tiny-gpt2')
        """
        return cls(
            models=("zoo:attn-only-2l", "random:tiny-gpt2"), recall_pairs=8, random_seeds=2,
            speed_batch=(4, 12), repeats=3, memory_batch=(4, 16), memory_models=("random:tiny-gpt2",),
            scaling_models=("random:tiny-gpt2",), scaling_sweep=None, scaling_pairs=(1, 2, 4),
            scaling_seq=(8, 16),
            scaling_base=(2, 12), scaling_repeats=1, peer_models=("random:tiny-gpt2",),
            peer_batch=(2, 8), peer_repeats=1,
        )  # fmt: skip

    @classmethod
    def gpu(cls, device: str = "cuda") -> BenchConfig:
        """The speed and memory ratios on a GPU: random GPT-2-small (124M) and Llama (~1.1B)
        shapes, longer sequences (a GPU is idle on the CPU batches).

        Example:
            >>> BenchConfig.gpu().parts
            ('speed', 'memory')
        """
        return cls(
            models=("random:gpt2-small", "random:llama-1b"), device=device,
            parts=("speed", "memory"), speed_batch=(8, 64), big_batch=(8, 64), repeats=5,
            big_repeats=5, memory_batch=(8, 64),
        )  # fmt: skip


def default_models() -> tuple[str, ...]:
    """Every installed zoo model, then the random GPT-2-small and Llama-GQA shapes.

    Example:
        >>> "random:gpt2-small" in default_models()
        True
    """
    from circuitgraph import zoo

    return (*(f"zoo:{m.name}" for m in zoo.list_models()), *BIG)


def machine(threads: int, device: str = "cpu") -> dict[str, Any]:
    """The machine the numbers come from (with the GPU's name when one is used).

    Example:
        >>> "torch" in machine(1)
        True
    """
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {
        "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
        "torch": torch.__version__, "platform": platform.platform(), "device": device,
    }  # fmt: skip
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


Say = Callable[[str], None]


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
