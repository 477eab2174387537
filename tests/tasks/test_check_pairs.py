"""Degenerate prompt pairs are refused before any forward pass (tasks.pairs.check_pairs,
called by every public entry point through run.resolve)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from circuitgraph.attribution import attribute_nodes
from circuitgraph.errors import CircuitGraphWarning, DataError
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.tasks.pairs import PromptPairs, check_pairs

from ..conftest import D_VOCAB


def _pairs(clean, corrupt, answer, wrong) -> PromptPairs:
    return PromptPairs.from_tokens(clean, corrupt, answer, wrong)


def test_token_ids_outside_the_vocabulary_are_refused_naming_the_pair():
    ok = _pairs([[2, 5], [2, 6]], [[2, 7], [2, 8]], [4, 4], [9, 9])
    assert check_pairs(ok, 10) == 0
    with pytest.raises(DataError, match=r"pair 2: expected clean token ids in \[0, 10\).*got 60"):
        check_pairs(_pairs([[2, 5], [2, 60]], [[2, 7], [2, 8]], [4, 4], [9, 9]), 10)
    with pytest.raises(DataError, match=r"pair 1: expected wrong token ids.*got 10"):
        check_pairs(_pairs([[2, 5]], [[2, 7]], [4], [10]), 10)
    # padding is not the model's business: a pad id past the vocabulary is fine
    padded = PromptPairs.from_tokens([[2, 5, 6], [2, 5]], [[2, 7, 6], [2, 7]], [4, 4], [9, 9], 99)
    assert check_pairs(padded, 10) == 0


def test_answer_equal_to_wrong_is_refused_only_where_the_metric_compares_them():
    same = _pairs([[2, 5], [2, 6]], [[2, 7], [2, 8]], [4, 4], [9, 4])
    with pytest.raises(DataError, match=r"same token in 1 of 2 pairs \(pair 2\)"):
        check_pairs(same, 10, compares_wrong=True)
    assert check_pairs(same, 10, compares_wrong=False) == 0


def test_identical_pairs_warn_and_all_identical_is_refused():
    some = _pairs([[2, 5], [2, 6], [2, 6]], [[2, 7], [2, 6], [2, 6]], [4] * 3, [9] * 3)
    with pytest.warns(CircuitGraphWarning, match=r"2 of 3 pairs .* \(pair 2, 3\)"):
        assert check_pairs(some, 10) == 2
    with pytest.raises(DataError, match="all 3 pairs are identical"):
        check_pairs(replace(some, corrupt=some.clean), 10)


def test_the_library_refuses_before_any_forward_pass(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        bad = replace(pairs, answer=torch.full_like(pairs.answer, D_VOCAB))
        for method in ("atp*", "exact"):
            with pytest.raises(DataError, match="vocabulary"):
                attribute_nodes(model, bad, method=method)
        with pytest.raises(DataError, match="identical"):
            attribute_nodes(model, replace(pairs, corrupt=pairs.clean))
    finally:
        handle.remove()
    assert calls == []
    # the wrong answer is not read by logprob: answer = wrong is fine there
    same = replace(pairs, wrong=pairs.answer)
    got = attribute_nodes(model, same, "logprob", nodes=enumerate_nodes(info, ["head"]))
    assert got.signed.abs().max() > 0
