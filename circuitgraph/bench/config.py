"""What ``circuitgraph bench`` measures: the configuration, the default models, the machine."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BIG", "PARTS", "BenchConfig", "Say", "default_models", "machine"]

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
    # when given, the speed and memory parts run every model at each of these batches
    batches: tuple[tuple[int, int], ...] = ()

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
        """The speed and memory ratios on a GPU: random GPT-2-small (124M), Llama (~1.1B) and
        a Llama-3-8B-like GQA shape (~7.2B, built on the GPU in bf16), each at 8x64 and
        32x256 (a GPU is idle on the CPU batches).

        Example:
            >>> BenchConfig.gpu().parts
            ('speed', 'memory')
        """
        return cls(
            models=("random:gpt2-small", "random:llama-1b", "random:llama-7b"), device=device,
            parts=("speed", "memory"), speed_batch=(8, 64), big_batch=(8, 64), repeats=5,
            big_repeats=5, memory_batch=(8, 64), batches=((8, 64), (32, 256)),
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
