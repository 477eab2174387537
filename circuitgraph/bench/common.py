"""Shared pieces of the benchmark: random models of real shapes, prompt pairs, timing.

Timing is the house method: the functions compared are run alternately, the minimum over
repeats is kept, and with one torch thread the clock is the process's CPU time (waiting for
a busy shared core does not inflate it). Every speed figure is a ratio of two such timings
taken in the same run on the same batch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from circuitgraph.arch import hooks
from circuitgraph.errors import ConfigError
from circuitgraph.model import load_model, resolve_device
from circuitgraph.run import attached
from circuitgraph.tasks.metrics import answer_logits, get_metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = [
    "SHAPES",
    "bare_passes",
    "clock",
    "hf_passes",
    "interleaved_min",
    "load_spec",
    "random_dir",
    "random_model",
    "random_pairs",
]

SHAPES: dict[str, dict[str, Any]] = {
    "tiny-gpt2": {"arch": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64, "vocab": 256},
    "gpt2-small": {"arch": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "vocab": 50257},
    "gpt2-6l": {"arch": "gpt2", "n_layer": 6, "n_head": 8, "n_embd": 384, "vocab": 8192},
    "tiny-llama": {
        "arch": "llama", "n_layer": 2, "n_head": 4, "n_kv": 2, "n_embd": 64, "d_mlp": 128,
        "vocab": 256,
    },
    # Llama-shaped with grouped-query attention, ~101M parameters (untied embeddings).
    "llama-gqa-small": {
        "arch": "llama", "n_layer": 12, "n_head": 12, "n_kv": 4, "n_embd": 768, "d_mlp": 2048,
        "vocab": 16384,
    },
    # Llama-shaped, ~1.1B parameters (untied): the GPU size point; slow to build on a CPU.
    "llama-1b": {
        "arch": "llama", "n_layer": 16, "n_head": 32, "n_kv": 8, "n_embd": 2048, "d_mlp": 8192,
        "vocab": 32000,
    },
    # A Llama-3-8B-like shape, ~7.2B parameters: built on the device in bf16, never saved.
    "llama-7b": {
        "arch": "llama", "n_layer": 32, "n_head": 32, "n_kv": 8, "n_embd": 4096, "d_mlp": 14336,
        "vocab": 32000, "on_device": "bfloat16",
    },
}  # fmt: skip

_DIRS: dict[tuple[str, int, bool], str] = {}


def _config(shape: str) -> Any:
    s = SHAPES[shape]
    if s["arch"] == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=s["vocab"], n_positions=256, n_embd=s["n_embd"], n_layer=s["n_layer"],
            n_head=s["n_head"], bos_token_id=2, eos_token_id=3,
        )  # fmt: skip
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=s["vocab"], hidden_size=s["n_embd"], intermediate_size=s["d_mlp"],
        num_hidden_layers=s["n_layer"], num_attention_heads=s["n_head"],
        num_key_value_heads=s["n_kv"], max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )  # fmt: skip


def random_dir(shape: str, seed: int = 0, weights: bool = True) -> str:
    """A folder holding a randomly initialised HF model of ``shape`` (made once per process),
    or only its config and tokenizer (``weights=False``).

    Example:
        >>> path = random_dir("tiny-gpt2")  # doctest: +SKIP
    """
    if shape not in SHAPES:
        raise ConfigError(f"expected a model shape among {sorted(SHAPES)} but got {shape!r}")
    key = (shape, seed, weights)
    if key not in _DIRS:
        from transformers import AutoModelForCausalLM

        from circuitgraph.zoo.tokenizer import build_word_tokenizer

        torch.manual_seed(seed)
        path = tempfile.mkdtemp(prefix=f"cg-{shape}-")
        if weights:
            AutoModelForCausalLM.from_config(_config(shape)).save_pretrained(path)
        else:
            _config(shape).save_pretrained(path)
        build_word_tokenizer([f"w{i}" for i in range(SHAPES[shape]["vocab"] - 4)], path)
        _DIRS[key] = path
    return _DIRS[key]


def random_model(
    shape: str, seed: int = 0, device: str = "cpu", on_device: str | None = None
) -> tuple[Any, Any]:
    """A randomly initialised model of the given shape, loaded through ``load_model``.

    Shapes too large to build and save on a CPU (``on_device`` in :data:`SHAPES`, or the
    argument: a dtype name) are built directly on ``device`` in that dtype from a folder
    holding only their config and tokenizer; the seed makes them the same in every process.

    Example:
        >>> model, info = random_model("tiny-llama")  # doctest: +SKIP
        >>> info.n_kv_heads  # doctest: +SKIP
        2
    """
    dtype = on_device or SHAPES.get(shape, {}).get("on_device")
    if dtype is None:
        return load_model(random_dir(shape, seed), device=device)
    from transformers import AutoModelForCausalLM

    path = random_dir(shape, seed, weights=False)
    torch.manual_seed(seed)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(_config(shape), torch_dtype=getattr(torch, dtype))
    return load_model(path, device=device, dtype=dtype, hf_model=hf.eval())


def load_spec(spec: str, device: str = "cpu") -> tuple[Any, Any]:
    """``random:SHAPE`` or anything ``load_model`` accepts (``zoo:NAME``, a folder).

    A CUDA device becomes the current one, so that the clock's synchronisation and the
    memory statistics (which read the current device) see the GPU doing the work.

    Example:
        >>> model, info = load_spec("zoo:attn-only-2l")  # doctest: +SKIP
    """
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    device = str(resolved)
    if spec.startswith("random:"):
        return random_model(spec.split(":", 1)[1], device=device)
    return load_model(spec, device=device)


def random_pairs(d_vocab: int, n: int, t: int, seed: int = 0) -> PromptPairs:
    """``n`` random clean sequences of length ``t``; the corrupt one differs in the middle.

    Example:
        >>> random_pairs(64, 2, 5).clean.shape
        torch.Size([2, 5])
    """
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, d_vocab, (n, t), generator=g)
    corrupt = clean.clone()
    corrupt[:, t // 2] = torch.randint(4, d_vocab, (n,), generator=g)
    ids = torch.randint(4, d_vocab, (2, n), generator=g)
    # Degenerate pairs are refused by the library: a draw equal to the token it replaces
    # (or to the answer) moves on to the next id.
    corrupt[:, t // 2] = _other_than(corrupt[:, t // 2], clean[:, t // 2], d_vocab)
    ids[1] = _other_than(ids[1], ids[0], d_vocab)
    return PromptPairs.from_tokens(
        clean.tolist(), corrupt.tolist(), ids[0].tolist(), ids[1].tolist()
    )


def _other_than(x: torch.Tensor, avoid: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """``x`` with every entry equal to ``avoid`` replaced by the next id in [4, d_vocab)."""
    return torch.where(x == avoid, 4 + (x - 3) % (d_vocab - 4), x)


def bare_passes(model: Any, pairs: PromptPairs, n_backward: int) -> Callable[[], None]:
    """2 forward passes and ``n_backward`` backward passes of the model, nothing else.

    A backward pass is the gradient of the summed metric with respect to the embedding
    output (activation gradients only: what attribution needs).

    Example:
        >>> run = bare_passes(model, pairs, 1)  # doctest: +SKIP
        >>> run()  # doctest: +SKIP
    """
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


def hf_passes(model: Any, pairs: PromptPairs, n_backward: int) -> Callable[[], None]:
    """:func:`bare_passes` on the Hugging Face module the bridge wraps, without the bridge:
    the same weights, the same 2 forward and ``n_backward`` backward passes, no hook points.

    Example:
        >>> run = hf_passes(model, pairs, 1)  # doctest: +SKIP
    """
    metric = get_metric("logit_diff")
    hf = model.original_model
    embed = hf.get_input_embeddings()

    def run() -> None:
        with torch.no_grad():
            hf(input_ids=pairs.corrupt)
        with torch.enable_grad():
            leaf = embed(pairs.clean).detach().requires_grad_(True)
            logits = hf(inputs_embeds=leaf).logits
            loss = metric(answer_logits(logits, pairs), pairs).sum()
            for i in range(n_backward):
                torch.autograd.grad(loss, [leaf], retain_graph=i < n_backward - 1)

    return run


def clock() -> float:
    """CPU time of this process with one thread (waiting for a shared core does not count),
    wall time otherwise; once CUDA is in use, wall time after waiting for the GPU's queued
    work (its kernels run asynchronously and cost no CPU time).

    Example:
        >>> clock() >= 0
        True
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def interleaved_min(fns: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Minimum time of each function, the functions run in turn ``repeats`` times.

    Example:
        >>> sorted(interleaved_min({"a": lambda: None}, 2))
        ['a']
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best
