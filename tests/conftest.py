"""Tiny seeded models of both architectures, saved to a temp dir and loaded the way a
user's model is (``load_model(directory)``), plus random prompt pairs for them."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.model import load_model
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.zoo.tokenizer import build_word_tokenizer

VOCAB_WORDS = [f"w{i}" for i in range(44)]  # + 4 special tokens = 48
D_VOCAB = len(VOCAB_WORDS) + 4


def _save_gpt2(path: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=D_VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    _scale_up(model)
    model.save_pretrained(path)
    build_word_tokenizer(VOCAB_WORDS, path)


def _save_llama(path: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=D_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        tie_word_embeddings=False, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    _scale_up(model)
    model.save_pretrained(path)
    build_word_tokenizer(VOCAB_WORDS, path)


def _scale_up(model: torch.nn.Module) -> None:
    """HF's init (std 0.02) makes a near-constant model; larger weights give real effects."""
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("tiny-gpt2"))
    _save_gpt2(path)
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("tiny-llama"))
    _save_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(gpt2_dir: str):
    return load_model(gpt2_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_llama(llama_dir: str):
    return load_model(llama_dir, device="cpu")


@pytest.fixture(params=["gpt2", "llama"])
def tiny(request: pytest.FixtureRequest):
    """Each tiny architecture in turn: (model, info)."""
    return request.getfixturevalue(f"tiny_{request.param}")


def random_pairs(
    n: int = 6, t_max: int = 9, seed: int = 0, vary_length: bool = True
) -> PromptPairs:
    """Random same-length clean/corrupt pairs of varying lengths (exercises padding)."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = [], []
    for i in range(n):
        t = t_max - (i % 3 if vary_length else 0)
        c = [2, *torch.randint(4, D_VOCAB, (t - 1,), generator=g).tolist()]
        x = list(c)
        for j in torch.randint(1, t, (2,), generator=g).tolist():
            x[j] = int(torch.randint(4, D_VOCAB, (1,), generator=g))
        clean.append(c)
        corrupt.append(x)
    answer = torch.randint(4, D_VOCAB, (n,), generator=g).tolist()
    wrong = torch.randint(4, D_VOCAB, (n,), generator=g).tolist()
    return PromptPairs.from_tokens(clean, corrupt, answer, distinct(answer, wrong, 4, D_VOCAB))


def only_first_differs(pairs: PromptPairs) -> PromptPairs:
    """The pairs with every corrupt prompt but the first replaced by its clean prompt."""
    from dataclasses import replace

    corrupt = pairs.clean.clone()
    corrupt[0] = pairs.corrupt[0]
    return replace(pairs, corrupt=corrupt)


def distinct(answer: list[int], wrong: list[int], low: int, high: int) -> list[int]:
    """``wrong`` with every id equal to its pair's answer moved to the next id in
    [low, high): the library refuses answer = wrong under the logit difference."""
    return [
        w if w != a else low + (w + 1 - low) % (high - low)
        for a, w in zip(answer, wrong, strict=True)
    ]


@pytest.fixture
def pairs() -> PromptPairs:
    return random_pairs()
