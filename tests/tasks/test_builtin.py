"""The built-in tasks: determinism, tokenizer checks, and what each pair means."""

from __future__ import annotations

import random

import pytest
import torch

from circuitgraph.errors import ConfigError, DataError
from circuitgraph.tasks import TASKS, Task, get_task, make_pairs
from circuitgraph.tasks.builtin import (
    INDUCTION_WORDS,
    IOI_TEMPLATES,
    NAMES,
    NUMBERS,
    sample_greater_than,
    sample_induction,
    sample_ioi,
)
from circuitgraph.zoo import corpus
from circuitgraph.zoo.tokenizer import build_word_tokenizer

TASK_NAMES = sorted(TASKS)


def _tensors(pairs):
    return [pairs.clean, pairs.corrupt, pairs.answer, pairs.wrong, pairs.answer_pos]


def test_registry_entries_are_tasks():
    assert TASK_NAMES == ["greater-than", "induction", "ioi"]
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name
        assert task.description and task.models and task.metric == "logit_diff"
    assert "attn-only-2l" in TASKS["induction"].models


def test_get_task_unknown_lists_valid_names():
    with pytest.raises(ConfigError, match=r"greater-than.*induction.*ioi"):
        get_task("ioii")
    assert get_task(TASKS["ioi"]) is TASKS["ioi"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_pairs(word_tok, name):
    a, b = make_pairs(name, word_tok, 40, seed=3), make_pairs(name, word_tok, 40, seed=3)
    for x, y in zip(_tensors(a), _tensors(b), strict=True):
        assert torch.equal(x, y)
    c = make_pairs(name, word_tok, 40, seed=4)
    assert not torch.equal(a.clean, c.clean)


@pytest.mark.parametrize("tok", ["word_tok", "bpe_tok"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_pairs_are_well_formed(request, tok, name):
    """Any tokenizer: same-length clean/corrupt, known tokens, answer differs from wrong."""
    tokenizer = request.getfixturevalue(tok)
    texts = get_task(name).generate(tokenizer, 60, 0)
    for pair in texts:
        clean = tokenizer.encode(pair.clean, add_special_tokens=False)
        corrupt = tokenizer.encode(pair.corrupt, add_special_tokens=False)
        assert len(clean) == len(corrupt)
        assert pair.clean != pair.corrupt and pair.answer != pair.wrong
    pairs = make_pairs(name, tokenizer, 60, seed=0, max_len=48)
    assert len(pairs) == 60
    assert bool((pairs.answer != pairs.wrong).all())
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        assert not bool((pairs.clean == unk).any()) and not bool((pairs.corrupt == unk).any())


def test_ioi_pairs_mean_what_they_say(word_tok):
    pairs = make_pairs("ioi", word_tok, 50, seed=1)
    orders = set()
    for i in range(len(pairs)):
        n = int(pairs.answer_pos[i]) + 1
        clean, corrupt = pairs.clean[i, :n].tolist(), pairs.corrupt[i, :n].tolist()
        io, s = int(pairs.answer[i]), int(pairs.wrong[i])
        assert clean.count(io) == 1 and clean.count(s) == 2  # IO once, subject twice
        diff = [t for t in range(n) if clean[t] != corrupt[t]]
        assert len(diff) == 1 and clean[diff[0]] == s  # ABC: only S2 is replaced
        assert corrupt[diff[0]] not in (io, s)
        orders.add(clean.index(io) < clean.index(s))
    assert orders == {True, False}  # both ABBA and BABA


def test_ioi_sampler_uses_every_template():
    rng = random.Random(0)
    starts = {sample_ioi(rng).clean.split()[0] for _ in range(400)}
    assert starts == {t.split()[0] for t in IOI_TEMPLATES}
    assert len(NAMES) == len(set(NAMES)) >= 50


def test_induction_pairs_mean_what_they_say(word_tok):
    pairs = make_pairs("induction", word_tok, 50, seed=2)
    for i in range(len(pairs)):
        n = int(pairs.answer_pos[i]) + 1
        for toks, target in ((pairs.clean, pairs.answer), (pairs.corrupt, pairs.wrong)):
            row = toks[i, :n].tolist()
            earlier = [p for p in range(1, n - 1) if row[p] == row[-1]]
            assert len(earlier) == 1  # the current token occurred exactly once before
            assert row[earlier[0] + 1] == int(target[i])  # induction's prediction


def test_induction_sampler_lengths():
    ex = sample_induction(random.Random(0), INDUCTION_WORDS, lengths=(5, 5))
    assert len(ex.clean) == len(ex.corrupt) and 6 <= len(ex.clean) <= 9
    assert ex.clean[:5] != ex.corrupt[:5] and ex.clean[5:] == ex.corrupt[5:]


def test_greater_than_pairs_mean_what_they_say(word_tok):
    for pair in get_task("greater-than").generate(word_tok, 100, 5):
        start = int(pair.clean.split()[-5 if "lasted" in pair.clean else -7])
        assert int(pair.wrong) < start < int(pair.answer)
        assert (
            " 01 " in pair.corrupt and pair.corrupt.replace(" 01 ", f" {start:02d} ") == pair.clean
        )
    ex = sample_greater_than(random.Random(0))
    assert 2 <= ex.start <= 98


def test_missing_names_raise_and_list_them():
    words = [w for w in corpus.vocabulary() if w not in ("Mary", "John")]
    with pytest.raises(DataError, match=r"every name .* 2 are not \('John', 'Mary'\)"):
        make_pairs("ioi", build_word_tokenizer(words), 4)


def test_missing_numbers_raise_and_list_them():
    words = [w for w in corpus.vocabulary() if w != "42"]
    with pytest.raises(DataError, match=r"two-digit number.*'42'"):
        make_pairs("greater-than", build_word_tokenizer(words), 4)


def test_unknown_template_words_raise():
    words = [w for w in corpus.vocabulary() if w != "lasted"]
    with pytest.raises(DataError, match=r"'lasted'"):
        make_pairs("greater-than", build_word_tokenizer(words), 4)


def test_too_few_induction_words_raise():
    with pytest.raises(DataError, match=r"induction.*single-token words"):
        make_pairs("induction", build_word_tokenizer(list(INDUCTION_WORDS[:10])), 4)


def test_multi_token_words_are_caught_with_bpe(bpe_tok):
    """Numbers the BPE does not know as single tokens make greater-than refuse, naming them."""
    from circuitgraph.tasks.builtin import single_tokens

    ok, bad = single_tokens(bpe_tok, [*NUMBERS, "zebrafish"])
    assert bad == ["zebrafish"] and len(ok) == len(NUMBERS)


def test_n_must_be_positive(word_tok):
    with pytest.raises(ConfigError, match="positive"):
        make_pairs("ioi", word_tok, 0)
