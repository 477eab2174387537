"""Tokenizers for the task tests: the zoo's word-level one and a GPT-2-style byte-level BPE."""

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
    """A byte-level BPE trained on the corpus: words are single tokens only with a leading space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = corpus.sample_documents(random.Random(0), corpus.MIXES["all"], 2000)
    docs += [" ".join(corpus.vocabulary())] * 5
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
