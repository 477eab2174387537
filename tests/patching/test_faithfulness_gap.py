"""A vanishing clean − corrupt gap refuses faithfulness (run.MetricGap, CircuitEval)."""

from __future__ import annotations

import math

import pytest

from circuitgraph.attribution import attribute_nodes
from circuitgraph.errors import CircuitGraphWarning
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import CircuitEval, evaluate_circuit
from circuitgraph.run import GAP_REFUSE, GAP_WARN, MetricGap, metric_gap
from circuitgraph.tasks.pairs import PromptPairs

from ..conftest import only_first_differs, random_pairs


def _pairs(clean, corrupt, answer, wrong) -> PromptPairs:
    return PromptPairs.from_tokens(clean, corrupt, answer, wrong)


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
