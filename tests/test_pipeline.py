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
    return cg.discover(model, pairs, keep_nodes=12, verify_k=3, diagnose_subsets=8)


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
    with pytest.raises(ConfigError, match="at most one fixed edge selection"):
        cg.discover(model, pairs, edge_threshold=0.1, edge_top_n=5)
    with pytest.raises(ConfigError, match="faithfulness target > 0"):
        cg.discover(model, pairs, target_faithfulness=0.0)
    with pytest.raises(ConfigError, match="max_edges"):
        cg.discover(model, pairs, max_edges=0)
    with pytest.raises(ConfigError, match="rank_by"):
        cg.discover(model, pairs, rank_by="loudest")


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


def test_by_default_the_circuit_is_the_smallest_found_reaching_the_target(found) -> None:
    g = found.graph.graph
    s = g["search"]
    assert g["selection"]["rule"] == "target" and s["target"] == 0.8
    assert s["reached"] and g["faithfulness"] >= 0.8
    # the search's own run of the chosen circuit is the circuit's faithfulness
    assert s["faithfulness"] == pytest.approx(g["faithfulness"], abs=1e-9)
    assert s["n_edges"] == g["n_edges"] <= s["max_edges"]
    smaller = [f for k, _, f in s["evaluations"] if k < s["prefix"]]
    assert all(f < 0.8 for f in smaller[-1:])  # the prefix just below (bisection's lo) fails
    assert "## The target search (faithfulness >= 0.8" in found.report
    assert "The smallest circuit found with faithfulness >= 0.8" in found.report


def test_a_fixed_rule_and_a_cap_on_verified_edges(induction) -> None:
    model, _, pairs = induction
    fixed = cg.discover(
        model, pairs, keep_nodes=8, verify=0, diagnose_subsets=0, edge_top_n=6, verify_edges=2,
        edge_fractions=(),
    )  # fmt: skip
    g = fixed.graph
    assert g.graph["selection"]["rule"] == "top_n" and "search" not in g.graph
    verified = [(u, v) for u, v, d in g.edges(data=True) if d.get("verified")]
    top = sorted(cg.circuit_edges(g), key=lambda e: -fixed.edge_scores[e][1])[:2]
    assert sorted(verified) == sorted((e.src.id, e.dst.id) for e in top)
    assert g.graph["verification"]["edges"] == [e.id for e in top]
    n = g.graph["n_edges"]
    summary = g.graph["verification"]["summary"]
    assert f"2 of the circuit's {n} edges (the largest by |score|) were verified" in summary


def test_an_unreachable_target_says_so(induction) -> None:
    model, _, pairs = induction
    found = cg.discover(
        model, pairs, keep_nodes=4, verify=0, diagnose_subsets=0, target_faithfulness=50.0,
        max_edges=3, edge_fractions=(),
    )  # fmt: skip
    s = found.graph.graph["search"]
    assert not s["reached"] and found.graph.graph["n_edges"] <= 3
    assert "No circuit of at most 3 edges reached faithfulness >= 50" in found.report


def test_the_kept_nodes_grow_when_all_their_edges_miss_the_target(induction) -> None:
    model, _, pairs = induction
    # 8 nodes' 10 edges reach F 0.26 on this model and pairs; 16 nodes' edges reach 0.8
    found = cg.discover(model, pairs, keep_nodes=8, verify=0, diagnose_subsets=0, edge_fractions=())
    g = found.graph.graph
    assert [x["keep_nodes"] for x in g["node_growth"]][:2] == [8, 16]
    assert not g["node_growth"][0]["reached"] and g["search"]["reached"]
    assert g["keep_nodes"] > 8 and "were doubled" in found.report
    fixed = cg.discover(
        model, pairs, keep_nodes=8, verify=0, diagnose_subsets=0, edge_fractions=(),
        grow_nodes=False,
    )  # fmt: skip
    assert "node_growth" not in fixed.graph.graph and not fixed.graph.graph["search"]["reached"]
