"""Tokenizers for the task tests: the zoo's word-level one and GPT-2-style byte-level BPEs
(one keeping two-digit numbers whole, one splitting digits)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from circuitgraph.zoo import corpus
from circuitgraph.zoo.tokenizer import build_word_tokenizer


@pytest.fixture(scope="session")
def word_tok() -> Any:
    return build_word_tokenizer(corpus.vocabulary())


@pytest.fixture(scope="session")
def bpe_tok() -> Any:
    """A byte-level BPE trained on the corpus and the English tasks' sentences: words are
    single tokens only with a leading space, and it adds no BOS (like GPT-2's)."""
    return _bpe(digits=False)


@pytest.fixture(scope="session")
def digit_tok() -> Any:
    """The same BPE, but numbers are split into single digits (as Llama 3 and SmolLM2 do)."""
    return _bpe(digits=True)


def _english_docs() -> list[str]:
    """Sentences of the tasks that need an English vocabulary, so that its words get tokens."""
    from circuitgraph.tasks import capitals, pronouns

    rng = random.Random(1)
    docs = [pronouns.sample_pronoun(rng).clean + " she he" for _ in range(300)]
    docs += [
        (lambda ex: f"{ex.clean} {ex.answer}")(capitals.sample_capital(rng)) for _ in range(300)
    ]
    names = " ".join(pronouns.FEMALE_NAMES + pronouns.MALE_NAMES)
    places = " ".join(f"{country} {capital}" for country, capital in capitals.CAPITALS)
    return docs + [names, places] * 20


def _bpe(digits: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = corpus.sample_documents(random.Random(0), corpus.MIXES["all"], 2000)
    docs += [" ".join(corpus.vocabulary())] * 5 + _english_docs()
    core = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if digits
        else byte_level
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
