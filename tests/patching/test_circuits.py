"""Circuit runs: faithfulness at the ends, single-edge removal against edge patching, curves."""

from __future__ import annotations

import pytest

from circuitgraph.nodes import Edge, can_feed, edge_sources, edge_targets
from circuitgraph.patching import evaluate_circuit, patch_edges

from ..conftest import random_pairs


def test_faithfulness_is_one_for_all_edges_and_zero_for_none(tiny, llama_dir, gpt2_dir):
    from circuitgraph.model import load_model

    _, info = tiny
    path = llama_dir if info.grouped_query else gpt2_dir
    model, info = load_model(path, device="cpu", dtype="float64")
    pairs = random_pairs(5)
    everything = [
        Edge(s, d) for s in edge_sources(info) for d in edge_targets(info) if can_feed(s, d)
    ]
    full = evaluate_circuit(model, pairs, everything, batch_size=3)
    empty = evaluate_circuit(model, pairs, [], batch_size=3)
    assert abs(full.metric_clean - full.metric_corrupt) > 1e-2
    assert full.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-6)
    assert empty.metric_circuit == pytest.approx(empty.metric_corrupt, abs=1e-6)


def test_circuit_of_one_edge_equals_patching_all_but_that_edge(tiny_gpt2):
    """Cross-check of the circuit run on a 1-layer slice: with only `input -> logits` kept in a
    model where logits read the residual linearly... is not available; instead check that
    removing a single edge from the full circuit equals that edge's exact patch."""
    model, info = tiny_gpt2
    pairs = random_pairs(4)
    everything = [
        Edge(s, d) for s in edge_sources(info) for d in edge_targets(info) if can_feed(s, d)
    ]
    for e in [Edge.parse("a0.h2->a1.h1<k>"), Edge.parse("m0->m1"), Edge.parse("input->logits")]:
        without = evaluate_circuit(model, pairs, [x for x in everything if x != e])
        exact = patch_edges(model, pairs, [e])[e][0]
        assert without.metric_circuit - without.metric_clean == pytest.approx(exact, abs=1e-5)


def test_faithfulness_curve_is_the_circuit_faithfulness_of_each_top_n(tiny_gpt2):
    from circuitgraph.attribution import attribute_edges
    from circuitgraph.patching import faithfulness_curve

    model, _ = tiny_gpt2
    pairs = random_pairs(4)
    scores = attribute_edges(model, pairs, "logit_diff", "eap")
    curve = faithfulness_curve(model, pairs, scores, [0, 5, len(scores.edges())])
    assert [n for n, _ in curve] == [0, 5, len(scores.edges())]
    assert curve[0][1] == pytest.approx(0.0, abs=1e-5)
    assert curve[-1][1] == pytest.approx(1.0, abs=1e-5)
    five = evaluate_circuit(model, pairs, scores.top_k(5)).faithfulness
    assert curve[1][1] == pytest.approx(five, abs=1e-9)
