"""Shared pieces of the benchmark scripts: random models of real shapes, timing."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from circuitgraph.model import load_model
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.zoo.tokenizer import build_word_tokenizer

SHAPES: dict[str, dict[str, int]] = {
    "tiny-gpt2": {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab": 256},
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab": 50257},
}


def random_gpt2(shape: str, seed: int = 0) -> tuple[Any, Any]:
    """A randomly initialised GPT-2 of the given shape, loaded through ``load_model``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    s = SHAPES[shape]
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=s["vocab"], n_positions=256, n_embd=s["n_embd"], n_layer=s["n_layer"],
        n_head=s["n_head"], bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    path = tempfile.mkdtemp(prefix=f"cg-{shape}-")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    build_word_tokenizer([f"w{i}" for i in range(s["vocab"] - 4)], path)
    return load_model(path, device="cpu")


def random_pairs(d_vocab: int, n: int, t: int, seed: int = 0) -> PromptPairs:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, d_vocab, (n, t), generator=g)
    corrupt = clean.clone()
    corrupt[:, t // 2] = torch.randint(4, d_vocab, (n,), generator=g)
    ids = torch.randint(4, d_vocab, (2, n), generator=g)
    return PromptPairs.from_tokens(
        clean.tolist(), corrupt.tolist(), ids[0].tolist(), ids[1].tolist()
    )


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Minimum wall time over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
