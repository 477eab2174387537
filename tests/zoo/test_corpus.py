"""The training corpus: deterministic, fits the context, shares the tasks' words."""

from __future__ import annotations

import random

from circuitgraph.tasks import TASKS, make_pairs
from circuitgraph.train import N_CTX, encode_documents
from circuitgraph.zoo import corpus
from circuitgraph.zoo.tokenizer import build_word_tokenizer


def test_documents_are_deterministic_and_mixed():
    a = corpus.sample_documents(random.Random(5), corpus.MIXES["all"], 200)
    assert a == corpus.sample_documents(random.Random(5), corpus.MIXES["all"], 200)
    assert any(" gave " in d for d in a) and any("the year" in d for d in a)


def test_documents_fit_the_context_without_unknown_words():
    tok = build_word_tokenizer(corpus.vocabulary())
    docs = corpus.sample_documents(random.Random(0), corpus.MIXES["all"], 500)
    ids = [tok.encode(d, add_special_tokens=False) for d in docs]
    assert max(map(len, ids)) + 1 <= N_CTX
    assert all(tok.unk_token_id not in row for row in ids)
    chunks = encode_documents(tok, docs[:64], chunks=2)
    assert sum(c.shape[0] for c in chunks) == 64 and chunks[0].shape[1] <= chunks[1].shape[1]


def test_vocabulary_covers_every_zoo_task():
    """The tasks the zoo models are trained for (the others need a real English vocabulary)."""
    tok = build_word_tokenizer(corpus.vocabulary())
    assert len(tok) < 400
    zoo_tasks = {t for t in TASKS if set(TASKS[t].models) - {"smollm2-135m"}}
    assert zoo_tasks == {"ioi", "induction", "greater-than"}
    for name in zoo_tasks:
        make_pairs(name, tok, 20, seed=0, max_len=N_CTX)  # raises on an unknown word
