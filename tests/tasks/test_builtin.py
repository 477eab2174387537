"""The built-in tasks: determinism, tokenizer checks, and what each pair means."""

from __future__ import annotations

import random
import re

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
ZOO_TASKS = ["greater-than", "induction", "ioi"]  # the word-level zoo vocabulary has their words
ENGLISH_TASKS = ["capitals", "gendered-pronoun"]  # need a real English vocabulary


def _tensors(pairs):
    return [pairs.clean, pairs.corrupt, pairs.answer, pairs.wrong, pairs.answer_pos]


def test_registry_entries_are_tasks():
    assert sorted(ZOO_TASKS + ENGLISH_TASKS) == TASK_NAMES
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name
        assert task.description and task.models and task.metric == "logit_diff"
        assert "smollm2-135m" in task.models
    assert "attn-only-2l" in TASKS["induction"].models


def test_get_task_unknown_lists_valid_names():
    with pytest.raises(ConfigError, match=r"capitals.*greater-than.*induction.*ioi"):
        get_task("ioii")
    assert get_task(TASKS["ioi"]) is TASKS["ioi"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_pairs(bpe_tok, name):
    a, b = make_pairs(name, bpe_tok, 40, seed=3), make_pairs(name, bpe_tok, 40, seed=3)
    for x, y in zip(_tensors(a), _tensors(b), strict=True):
        assert torch.equal(x, y)
    c = make_pairs(name, bpe_tok, 40, seed=4)
    assert not torch.equal(a.clean, c.clean)


@pytest.mark.parametrize(
    ("tok", "name"),
    [("word_tok", n) for n in ZOO_TASKS]
    + [(t, n) for t in ("bpe_tok", "digit_tok") for n in TASK_NAMES],
)
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


@pytest.mark.parametrize("name", ENGLISH_TASKS)
def test_english_tasks_refuse_the_zoo_vocabulary_in_one_sentence(word_tok, name):
    with pytest.raises(DataError, match=r"needs a real model's English vocabulary") as err:
        make_pairs(name, word_tok, 4)
    assert str(err.value).count(". ") == 0 and "\n" not in str(err.value)


def test_ioi_draws_only_single_token_names():
    """Names the tokenizer lacks are left out; too few names left is refused."""
    words = [w for w in corpus.vocabulary() if w not in ("Mary", "John")]
    pairs = get_task("ioi").generate(build_word_tokenizer(words), 200, 0)
    used = {p.answer.strip() for p in pairs} | {p.wrong.strip() for p in pairs}
    assert used and not used & {"Mary", "John"} and len(used) > 20
    few = [w for w in corpus.vocabulary() if w not in NAMES[3:]]
    with pytest.raises(DataError, match=r"at least 10 names .* 3 of 50"):
        make_pairs("ioi", build_word_tokenizer(few), 4)


def test_zoo_pairs_are_unchanged_by_the_name_filter(word_tok):
    """With every name available, IOI draws exactly what the zoo's corpus sampler draws."""
    pairs = get_task("ioi").generate(word_tok, 30, 7)
    rng = random.Random(7)
    assert [p.clean for p in pairs] == [sample_ioi(rng).clean for _ in range(30)]


def test_greater_than_goes_digit_by_digit_where_numbers_split(digit_tok):
    from circuitgraph.tasks.builtin import splits_digits

    assert splits_digits(digit_tok) and not splits_digits(build_word_tokenizer(NUMBERS))
    pairs = get_task("greater-than").generate(digit_tok, 100, 5)
    for pair in pairs:
        year = re.search(r"year (\d\d)(\d\d) ", pair.clean)
        assert year is not None
        tens = int(year.group(2)) // 10
        assert int(pair.wrong) < tens < int(pair.answer) and len(pair.answer) == 1
        assert pair.corrupt == pair.clean.replace(year.group(0), f"year {year.group(1)}01 ")
    batch = make_pairs("greater-than", digit_tok, 100, seed=5)
    digits = {digit_tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    assert set(batch.answer.tolist()) <= digits and set(batch.wrong.tolist()) <= digits


def test_gendered_pronoun_pairs_mean_what_they_say(bpe_tok):
    from circuitgraph.tasks.pronouns import FEMALE_NAMES, MALE_NAMES

    pairs = get_task("gendered-pronoun").generate(bpe_tok, 100, 0)
    genders = set()
    for pair in pairs:
        (clean_name,) = [w for w in re.findall(r"\w+", pair.clean) if w in NAMES]
        (corrupt_name,) = [w for w in re.findall(r"\w+", pair.corrupt) if w in NAMES]
        female = clean_name in FEMALE_NAMES
        assert (corrupt_name in MALE_NAMES) is female
        assert (pair.answer, pair.wrong) == ((" she", " he") if female else (" he", " she"))
        assert pair.corrupt == pair.clean.replace(clean_name, corrupt_name)
        genders.add(female)
    assert genders == {True, False}


def test_capital_pairs_mean_what_they_say(bpe_tok):
    from circuitgraph.tasks.capitals import CAPITALS

    capital = dict(CAPITALS)
    for pair in get_task("capitals").generate(bpe_tok, 100, 0):
        clean, corrupt = pair.clean.split(), pair.corrupt.split()
        diff = [i for i, (a, b) in enumerate(zip(clean, corrupt, strict=True)) if a != b]
        assert len(diff) == 1  # only the country differs
        country, other = clean[diff[0]], corrupt[diff[0]]
        assert (pair.answer, pair.wrong) == (f" {capital[country]}", f" {capital[other]}")


def test_bos_follows_the_tokenizer_unless_told(word_tok, bpe_tok):
    from circuitgraph.tasks import adds_bos

    assert adds_bos(word_tok) and not adds_bos(bpe_tok)
    for tok in (word_tok, bpe_tok):
        default = make_pairs("ioi", tok, 8, seed=0)
        with_bos = make_pairs("ioi", tok, 8, seed=0, bos=True)
        without = make_pairs("ioi", tok, 8, seed=0, bos=False)
        assert bool((with_bos.clean[:, 0] == tok.bos_token_id).all())
        assert torch.equal(with_bos.clean[:, 1:], without.clean[:, : with_bos.seq_len - 1])
        assert torch.equal(with_bos.answer_pos, without.answer_pos + 1)
        assert torch.equal(default.clean, (with_bos if adds_bos(tok) else without).clean)


def test_bos_without_a_bos_token_is_refused(bpe_tok):
    from copy import deepcopy

    tok = deepcopy(bpe_tok)
    tok.bos_token = None
    with pytest.raises(DataError, match="--no-bos"):
        make_pairs("ioi", tok, 2, bos=True)
    assert make_pairs("ioi", tok, 2).clean.shape[0] == 2
