"""The whole pipeline as one call (`cg.discover`): what it returns and how it is configured."""

from __future__ import annotations

import pytest
import torch

import circuitgraph as cg
from circuitgraph.errors import ConfigError


@pytest.fixture(scope="module")
def induction():
    model, info = cg.load_model("zoo:attn-only-2l")
    return model, info, cg.make_pairs("induction", model.tokenizer, 16, seed=1)


@pytest.fixture(scope="module")
def found(induction):
    model, _, pairs = induction
    return cg.discover(model, pairs, keep_nodes=8, verify_k=3, diagnose_subsets=8)


def test_discovery_holds_every_stage(found, induction) -> None:
    model, _, pairs = induction
    assert found.graph is found.circuit and found.graph.graph["n_edges"] == len(
        cg.circuit_edges(found.graph)
    )
    assert found.verification is not None and len(found.verification.nodes) == 3
    assert found.diagnosis is not None and found.diagnosis.n_subsets == 8
    assert set(found.timings) >= {"screen", "verify", "diagnose", "edges", "circuit"}
    # the faithfulness it reports is the circuit's own, measured again from scratch
    again = cg.evaluate_circuit(model, pairs, cg.circuit_edges(found.graph))
    assert found.faithfulness.faithfulness == pytest.approx(again.faithfulness, abs=1e-9)
    assert found.graph.graph["faithfulness"] == pytest.approx(again.faithfulness, abs=1e-9)


def test_the_circuit_edges_carry_their_exact_effects(found, induction) -> None:
    model, _, pairs = induction
    kept = cg.circuit_edges(found.graph)
    exact = cg.patch_edges(model, pairs, kept)
    for e in kept:
        assert found.graph.edges[e.src.id, e.dst.id]["exact"] == pytest.approx(exact[e][0])


def test_the_report_names_the_numbers(found) -> None:
    text = found.report
    g = found.graph.graph
    assert text.startswith("# Circuit for") and f"{g['faithfulness']:.3f}" in text
    assert f"{found.diagnosis.bound:.4g}" in text


def test_overrides_are_checked(induction) -> None:
    model, _, pairs = induction
    with pytest.raises(ConfigError, match="fields of DiscoverConfig"):
        cg.discover(model, pairs, keep_nodez=3)
    with pytest.raises(ConfigError, match="exactly one edge selection"):
        cg.discover(model, pairs, edge_threshold=0.1)  # top-n stays set: two selections


def test_config_and_overrides_combine(induction) -> None:
    model, _, pairs = induction
    base = cg.DiscoverConfig(keep_nodes=6, verify_k=0, diagnose_subsets=0)
    small = cg.discover(model, pairs, base, edge_top_n=3)
    assert small.verification is None and small.diagnosis is None
    assert small.graph.graph["config"]["keep_nodes"] == 6
    assert small.graph.graph["selection"]["value"] == 3


def test_the_default_verifies_until_bounded_and_the_exact_values_are_exact(induction) -> None:
    model, _, pairs = induction
    found = cg.discover(model, pairs, keep_nodes=6, edge_top_n=6, edge_fractions=())
    v, cost = found.verification, found.cost
    assert v is not None and v.asked == "top 10" and v.stopped in ("bounded", "exhausted")
    assert cost is not None and cost.spent <= cost.budget == cost.exhaustive
    truth = cg.patch_nodes(model, pairs, list(v.nodes))
    assert torch.allclose(v.true, truth.signed.double(), atol=1e-5)
    trust = found.graph.graph["verification"]
    assert trust["rule"] == "auto" and trust["nodes"] == [n.id for n in v.nodes]
    assert found.graph.graph["edge_method"] == "eap-ig"
    if v.stopped == "exhausted":  # every node verified: no bound is claimed
        assert found.diagnosis is None and found.graph.graph["diagnostic_bound"] is None
