"""Shared pieces of the benchmark scripts: random models of real shapes, timing."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from circuitgraph.hooking import attached
from circuitgraph.model import load_model
from circuitgraph.nodes import hooks
from circuitgraph.tasks.metrics import answer_logits, get_metric
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


def bare_passes(model: Any, pairs: PromptPairs, n_backward: int) -> Callable[[], None]:
    """2 forward passes and ``n_backward`` backward passes of the model, nothing else."""
    metric = get_metric("logit_diff")

    def run() -> None:
        leaf: dict[str, torch.Tensor] = {}

        def make_leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
            leaf["x"] = act.detach().requires_grad_(True)
            return leaf["x"]

        with torch.no_grad():
            model(pairs.corrupt)
        with torch.enable_grad(), attached(model, fwd=[(hooks.embed, make_leaf)]):
            loss = metric(answer_logits(model(pairs.clean), pairs), pairs).sum()
            for i in range(n_backward):
                torch.autograd.grad(loss, [leaf["x"]], retain_graph=i < n_backward - 1)

    return run


def clock() -> float:
    """CPU time of this process with one thread (waiting for a shared core does not count),
    wall time otherwise."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def interleaved_min(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Minimum time of each function, the functions run in turn ``repeats`` times."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best
