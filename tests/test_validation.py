"""Degenerate data is refused before any forward pass; a vanishing clean − corrupt gap
refuses faithfulness (run.MetricGap)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from circuitgraph.attribution import attribute_nodes
from circuitgraph.errors import CircuitGraphWarning, DataError
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import CircuitEval, evaluate_circuit
from circuitgraph.run import GAP_REFUSE, GAP_WARN, MetricGap, metric_gap
from circuitgraph.tasks.pairs import PromptPairs, check_pairs

from .conftest import D_VOCAB, only_first_differs, random_pairs


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


def test_metric_gap_thresholds_are_relative_to_the_metric():
    big = MetricGap(clean=3.0, corrupt=-1.0, scale=3.0)
    assert big.ratio == pytest.approx(4 / 3) and big.refusal is None and big.caution is None
    small = MetricGap(clean=10.0, corrupt=10.0 - 0.5 * GAP_WARN * 10, scale=10.0)
    assert small.refusal is None and "amplifies" in small.caution
    tiny = MetricGap(clean=10.0, corrupt=10.0 - 0.5 * GAP_REFUSE * 10, scale=10.0)
    assert "faithfulness not computed" in tiny.refusal and tiny.caution is None
    # the same relative gap on another scale gives the same verdict
    assert MetricGap(0.01, 0.01 - 0.5 * GAP_REFUSE * 0.01, 0.01).refusal is not None
    assert MetricGap(0.0, 0.0, 0.0).refusal is not None
    refused = CircuitEval(3, 1.0, 10.0, 10.0 - 1e-4, metric_scale=10.0)
    assert math.isnan(refused.faithfulness)
    assert CircuitEval(3, 1.0, 2.0, 0.0).faithfulness == 0.5


def _swapped(pairs: PromptPairs) -> PromptPairs:
    """Each pair and its mirror (clean and corrupt exchanged, same answers): the clean and
    corrupt means are equal, so the gap cancels exactly while every pair has an effect."""
    return pairs.concat(pairs.swapped())


def test_a_cancelling_gap_refuses_faithfulness_with_a_warning(tiny_gpt2):
    model, _ = tiny_gpt2
    pairs = random_pairs(4)
    edges = []
    with pytest.warns(CircuitGraphWarning, match="faithfulness not computed"):
        ev = evaluate_circuit(model, _swapped(pairs), edges)
    assert math.isnan(ev.faithfulness) and ev.gap.ratio < GAP_REFUSE
    gap = metric_gap(model, _swapped(pairs))
    assert abs(gap.gap) < 1e-4 * gap.scale and gap.scale > 0.1
    fine = evaluate_circuit(model, pairs, edges)  # no warning: the gap is large here
    assert fine.gap.ratio > GAP_WARN and fine.faithfulness == pytest.approx(0.0, abs=1e-6)


def test_some_identical_pairs_warn_once_per_call(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    with pytest.warns(CircuitGraphWarning) as seen:
        attribute_nodes(model, only_first_differs(pairs), nodes=enumerate_nodes(info, ["head"]))
    assert len([w for w in seen if "identical" in str(w.message)]) == 1
