"""The circuit graph builder: selection rules, path pruning, internal edges, attributes."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from circuitgraph.errors import ConfigError
from circuitgraph.graph import (
    build_circuit,
    circuit_edges,
    circuit_from_edges,
    model_attrs,
    node_attributes,
)
from circuitgraph.model import ModelInfo
from circuitgraph.nodes import Edge, Node
from circuitgraph.scores import EdgeScores, NodeScores

# A hand-made score table (signed values; absolute = |signed|).
TABLE = {
    "input->a0.h0<q>": 5.0,
    "a0.h0->a1.h0<k>": -4.0,
    "a1.h0->logits": 3.0,
    "m0->logits": -2.5,
    "input->logits": 1.0,
    "input->a0.h0<v>": -0.5,
    "a0.h0->m0": 0.3,
    "a0.h1->logits": 0.2,
    "input->a0.h1<q>": 0.1,
    "input->m0": 0.05,
    "a0.h1->a1.h0<k>": 0.01,
    "a0.h0->logits": 0.0,
}


def scores_from(table: dict[str, float], method: str = "eap", meta=None) -> EdgeScores:
    """Dense EdgeScores holding exactly the edges of ``table`` (others invalid)."""
    edges = [Edge.parse(e) for e in table]
    sources = tuple(sorted({e.src for e in edges}, key=lambda n: n.sort_key))
    targets = tuple(sorted({e.dst for e in edges}, key=lambda n: n.sort_key))
    si = {n: i for i, n in enumerate(sources)}
    ti = {n: j for j, n in enumerate(targets)}
    signed = torch.zeros(len(sources), len(targets), dtype=torch.float64)
    valid = torch.zeros_like(signed, dtype=torch.bool)
    for e, s in zip(edges, table.values(), strict=True):
        signed[si[e.src], ti[e.dst]] = s
        valid[si[e.src], ti[e.dst]] = True
    return EdgeScores(
        sources, targets, signed, signed.abs(), valid, method, "logit_diff", 16, meta=meta or {}
    )


def full_scores(n_layers: int = 3, n_heads: int = 4, seed: int = 0) -> EdgeScores:
    """Every edge of a small sequential model, random heavy-tailed signed scores."""
    gen = torch.Generator().manual_seed(seed)
    sources, targets = [Node("input")], []
    for layer in range(n_layers):
        targets += [Node(x, layer, h) for h in range(n_heads) for x in "qkv"]  # type: ignore[arg-type]
        targets.append(Node("mlp", layer))
        sources += [Node("head", layer, h) for h in range(n_heads)]
        sources.append(Node("mlp", layer))
    targets.append(Node("logits"))
    valid = torch.tensor([[_reads(s, t) for t in targets] for s in sources])
    signed = torch.randn(len(sources), len(targets), generator=gen, dtype=torch.float64) ** 3
    signed = signed * valid
    return EdgeScores(
        tuple(sources), tuple(targets), signed, signed.abs(), valid, "atp*", "logit_diff", 32
    )


def _reads(s: Node, t: Node) -> bool:
    if s.kind == "input" or t.kind == "logits":
        return True
    if t.kind == "mlp":
        return s.layer < t.layer or (s.layer == t.layer and s.kind == "head")
    return s.layer < t.layer


def scored(G: nx.DiGraph) -> set[str]:
    return {f"{u}->{v}" for u, v, d in G.edges(data=True) if not d["internal"]}


def internal(G: nx.DiGraph) -> set[str]:
    return {f"{u}->{v}" for u, v, d in G.edges(data=True) if d["internal"]}


# --------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------


def test_top_n_takes_the_highest_absolute_scores_and_drops_off_path_edges():
    G = build_circuit(scores_from(TABLE), top_n=4)
    # m0->logits (-2.5) is in the top 4 but nothing reaches m0: dropped with m0.
    assert scored(G) == {"input->a0.h0<q>", "a0.h0->a1.h0<k>", "a1.h0->logits"}
    assert internal(G) == {"a0.h0<q>->a0.h0", "a1.h0<k>->a1.h0"}
    assert "m0" not in G
    assert G.graph["selection"] == {
        "rule": "top_n", "value": 4, "selected": 4, "completion": 0, "dropped_off_path": 1,
    }  # fmt: skip
    assert G.graph["n_edges"] == 3 and G.graph["n_nodes"] == 6
    assert list(G.nodes) == ["input", "a0.h0<q>", "a0.h0", "a1.h0<k>", "a1.h0", "logits"]


def test_threshold_keeps_every_edge_at_or_above_it():
    G = build_circuit(scores_from(TABLE), threshold=1.0)
    assert scored(G) == {"input->a0.h0<q>", "a0.h0->a1.h0<k>", "a1.h0->logits", "input->logits"}
    assert G.graph["selection"]["selected"] == 5


def test_greedy_grows_backwards_from_the_logits():
    es = scores_from(TABLE)
    # 4 steps: a1.h0->logits, a0.h0->a1.h0<k>, input->a0.h0<q>, m0->logits (m0 not fed yet).
    G4 = build_circuit(es, greedy=4)
    assert scored(G4) == {"a1.h0->logits", "a0.h0->a1.h0<k>", "input->a0.h0<q>"}
    assert G4.graph["selection"]["dropped_off_path"] == 1
    # 7 steps add input->logits, input->a0.h0<v> and a0.h0->m0, which now feeds m0->logits.
    G7 = build_circuit(es, greedy=7)
    assert scored(G7) == scored(G4) | {
        "input->logits", "input->a0.h0<v>", "a0.h0->m0", "m0->logits",
    }  # fmt: skip


def test_greedy_only_takes_edges_into_nodes_already_in_the_circuit():
    es = scores_from(
        {"input->a0.h1<v>": 10.0, "input->a0.h0<q>": 1.0, "a0.h0->logits": 0.5,
         "a0.h1->logits": 0.1}
    )  # fmt: skip
    assert scored(build_circuit(es, greedy=2)) == {"a0.h0->logits", "input->a0.h0<q>"}
    assert build_circuit(es, top_n=2).number_of_nodes() == 0  # both top edges dead-end
    assert "input->a0.h1<v>" not in scored(build_circuit(es, greedy=3))  # a0.h1 just entered
    assert "input->a0.h1<v>" in scored(build_circuit(es, greedy=4))


def test_greedy_edges_all_lead_to_the_logits_on_a_full_model():
    es = full_scores()
    G = build_circuit(es, greedy=40)
    sel = G.graph["selection"]
    assert sel["selected"] == 40 and G.graph["n_edges"] == 40 - sel["dropped_off_path"]
    top = build_circuit(es, top_n=40)
    assert top.graph["n_edges"] < G.graph["n_edges"]  # random top edges rarely connect


@pytest.mark.parametrize("n", [5, 20, 60])
def test_every_node_lies_on_an_input_to_logits_path(n):
    for rule in ("top_n", "greedy"):
        G = build_circuit(full_scores(seed=n), **{rule: n})
        for node in G:
            assert node == "input" or nx.has_path(G, "input", node)
            assert node == "logits" or nx.has_path(G, node, "logits")


def test_selection_argument_errors():
    es = scores_from(TABLE)
    with pytest.raises(ConfigError, match="exactly one of top_n, threshold, greedy or target"):
        build_circuit(es)
    with pytest.raises(ConfigError, match=r"top_n=3, threshold=0\.5"):
        build_circuit(es, top_n=3, threshold=0.5)
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="whole number"):
            build_circuit(es, top_n=bad)
    with pytest.raises(ConfigError, match="a number for threshold"):
        build_circuit(es, threshold=float("nan"))


def test_nan_scores_and_bad_edge_kinds_are_refused():
    es = scores_from({"input->logits": float("nan")})
    with pytest.raises(ConfigError, match="NaN"):
        build_circuit(es, top_n=1)
    with pytest.raises(ConfigError, match=r"a0\.h0<q>->logits"):
        circuit_from_edges(["a0.h0<q>->logits"])


def test_empty_circuits_carry_a_warning_instead_of_failing():
    es = scores_from(TABLE)
    G = build_circuit(es, threshold=100.0)
    assert G.number_of_nodes() == 0 and G.graph["n_edges"] == 0
    assert "largest score is 5" in G.graph["warning"]
    assert "selects no edge" in build_circuit(es, top_n=0).graph["warning"]
    off = build_circuit(scores_from({"m0->logits": 1.0}), top_n=1)
    assert off.number_of_nodes() == 0 and "input -> logits path" in off.graph["warning"]


# --------------------------------------------------------------------------------------
# Representation
# --------------------------------------------------------------------------------------


def test_grouped_kv_inputs_connect_to_every_head_of_their_group():
    table = {"input->a0.kv1<k>": 1.0, "a0.h2->logits": 1.0, "a0.h3->logits": 0.5}
    G = build_circuit(scores_from(table), top_n=3, attrs={"n_heads": 4, "n_kv_heads": 2})
    assert internal(G) == {"a0.kv1<k>->a0.h2", "a0.kv1<k>->a0.h3"}
    G2 = build_circuit(scores_from(table, meta={"heads_per_kv": 2}), top_n=3)
    assert internal(G2) == internal(G)
    with pytest.raises(ConfigError, match="heads_per_kv"):
        build_circuit(scores_from(table), top_n=3)
    assert G.nodes["a0.kv1<k>"]["grouped"] is True and G.nodes["a0.kv1<k>"]["head"] == 1


def test_per_position_keys_feed_later_positions_queries_the_same_one():
    G = circuit_from_edges(
        ["input@1->a0.h0<k>@1", "input@3->a0.h0<q>@3", "input@4->a0.h0<v>@4",
         "a0.h0@3->logits@3"]
    )  # fmt: skip
    assert internal(G) == {"a0.h0<k>@1->a0.h0@3", "a0.h0<q>@3->a0.h0@3"}
    assert "a0.h0<v>@4" not in G  # a value at 4 cannot reach the output at 3
    assert G.nodes["a0.h0@3"]["position"] == 3 and G.nodes["logits@3"]["layer"] is None


def test_mlp_is_one_node_and_neurons_hang_off_it():
    G = circuit_from_edges(["input->m0", "m0->logits", "m0.n5->logits"])
    assert internal(G) == {"m0->m0.n5"}
    assert G.nodes["m0.n5"]["neuron"] == 5 and G.nodes["m0"]["kind"] == "mlp"


def test_attributes_of_nodes_edges_and_graph():
    es = scores_from(TABLE)
    heads = (Node("head", 0, 0), Node("head", 1, 0), Node("q", 0, 0))
    ns = NodeScores(
        heads, torch.tensor([-1.5, 0.25, 0.5], dtype=torch.float64),
        torch.tensor([1.5, 0.25, 0.75], dtype=torch.float64), "atp*", "logit_diff", 16,
    )  # fmt: skip
    G = build_circuit(
        es, ns, top_n=3,
        verified_nodes={"a0.h0": -1.25, Node("head", 5, 5): 9.0},
        verified_edges={"a1.h0->logits": 2.75},
        attrs={"model": "zoo:x", "task": "ioi", "faithfulness": 0.9,
               "faithfulness_curve": [(1, 0.2), (3, 0.9)], "versions": {"torch": "2"}},
    )  # fmt: skip
    assert G.nodes["a0.h0"] == {
        "kind": "head", "layer": 0, "position": None, "head": 0, "grouped": False,
        "score": 1.5, "signed": -1.5, "exact": -1.25, "verified": True,
    }  # fmt: skip
    assert G.nodes["a0.h0<q>"]["score"] == 0.75
    assert G.nodes["input"] == {"kind": "input", "layer": None, "position": None}
    assert G.edges["a1.h0", "logits"] == {
        "target_input": "logits", "internal": False, "score": 3.0, "signed": 3.0, "exact": 2.75,
        "verified": True,
    }  # fmt: skip
    assert "verified" not in G.nodes["a1.h0"] and "verified" not in G.edges["a0.h0", "a1.h0<k>"]
    assert G.edges["a0.h0", "a1.h0<k>"]["target_input"] == "k"
    assert G.edges["a0.h0<q>", "a0.h0"] == {"internal": True}
    g = G.graph
    assert g["faithfulness_curve"] == [[1, 0.2], [3, 0.9]]  # tuples stored as lists
    assert (g["model"], g["task"], g["faithfulness"], g["versions"]) == (
        "zoo:x", "ioi", 0.9, {"torch": "2"},
    )  # fmt: skip
    assert (g["edge_method"], g["metric"], g["n_pairs"], g["node_method"]) == (
        "eap", "logit_diff", 16, "atp*",
    )  # fmt: skip
    assert g["ranked_by"] == "score" and "warning" not in g


def test_attrs_must_be_json_like():
    with pytest.raises(ConfigError, match="JSON-like"):
        build_circuit(scores_from(TABLE), top_n=1, attrs={"x": object()})


def test_node_attributes_and_model_attrs():
    assert node_attributes(Node.parse("m2.n17@4")) == {
        "kind": "neuron", "layer": 2, "position": 4, "neuron": 17,
    }  # fmt: skip
    info = ModelInfo("m", 2, 8, 2, 32, 4, 64, "RMS", True, True, True, 50, 32)
    a = model_attrs(info)
    assert a["heads_per_kv"] == 4 and a["parallel_attn_mlp"] is True and a["d_model"] == 32


def test_selection_order_is_the_ranking_of_edge_scores():
    from circuitgraph.graph import _rows

    es = full_scores(seed=3)
    rounded = EdgeScores(
        es.sources, es.targets, es.signed.round(), es.score.round(), es.valid, "m", "x", 1
    )  # many ties
    for s in (es, rounded):
        assert [r.edge for r in _rows(s)] == s.ranking()


@pytest.mark.parametrize("seed", [0, 1])
def test_path_growth_matches_the_circuit_of_every_prefix(seed):
    """The viewer's slider shows {x : path_growth(x) <= k}; that must be circuit_from_edges of
    the top k edges, internal edges included, at every k."""
    from circuitgraph.graph import path_growth

    ranked = full_scores(n_layers=3, n_heads=2, seed=seed).ranking()
    node_at, edge_at = path_growth(ranked)
    for k in range(len(ranked) + 1):
        G = circuit_from_edges(ranked[:k])
        assert {e for e, at in edge_at.items() if at <= k} == set(G.edges), k
        assert {n for n, at in node_at.items() if at <= k} == set(G.nodes), k


def test_path_growth_with_grouped_kv_positions_and_neurons():
    from circuitgraph.graph import path_growth

    ranked = [
        Edge.parse(e)
        for e in (
            "m0.n3@1->logits@1", "input@0->a0.kv0<k>@0", "a0.h1@1->logits@1",
            "input@1->m0@1", "input@1->a0.h1<q>@1", "a0.h0@0->logits@0", "input@0->a0.h0<q>@0",
        )
    ]  # fmt: skip
    node_at, edge_at = path_growth(ranked, heads_per_kv=2)
    for k in range(len(ranked) + 1):
        G = circuit_from_edges(ranked[:k], heads_per_kv=2)
        assert {e for e, at in edge_at.items() if at <= k} == set(G.edges), k
        assert {n for n, at in node_at.items() if at <= k} == set(G.nodes), k
    # k@0 feeds head 1 (same KV group) at the later position 1: on a path once h1@1 -> logits is in
    assert edge_at[("a0.kv0<k>@0", "a0.h1@1")] == 3 and edge_at[("m0.n3@1", "logits@1")] == 4


# --------------------------------------------------------------------------------------
# Path completion and the faithfulness target
# --------------------------------------------------------------------------------------


def test_completion_keeps_a_strong_logits_edge_and_adds_its_widest_input_path():
    es = scores_from(TABLE)
    plain = build_circuit(es, top_n=4)
    assert "m0->logits" not in scored(plain)  # dropped: nothing reaches m0
    G = build_circuit(es, top_n=4, complete=True)
    # input -> m0 directly has |score| 0.05; via a0.h0 (5.0, then a0.h0->m0 0.3) the weakest
    # link is 0.3: the widest path, of which only a0.h0->m0 is new
    assert scored(G) == scored(plain) | {"m0->logits", "a0.h0->m0"}
    assert G.edges["a0.h0", "m0"]["completion"] is True
    assert "completion" not in G.edges["m0", "logits"]
    assert G.graph["selection"]["completion"] == 1
    assert G.graph["selection"]["dropped_off_path"] == 0


def test_completion_adds_the_path_to_the_logits_of_a_dead_end():
    es = scores_from({"input->a0.h0<q>": 5.0, "a0.h0->a1.h0<k>": 2.0, "a1.h0->logits": 0.1,
                      "a0.h0->logits": 0.2, "input->logits": 1.0})  # fmt: skip
    G = build_circuit(es, top_n=2, complete=True)
    # a1.h0<k> has no way on among the two chosen; a1.h0 -> logits (0.1) completes it
    assert scored(G) == {"input->a0.h0<q>", "a0.h0->a1.h0<k>", "a1.h0->logits"}
    assert G.edges["a1.h0", "logits"]["completion"] is True


@pytest.mark.parametrize("seed", range(5))
def test_with_completion_no_selected_edge_is_dropped(seed):
    es = full_scores(seed=seed)
    for n in (1, 3, 10, 30):
        G = build_circuit(es, top_n=n, complete=True)
        assert scored(G) >= {e.id for e in es.ranking()[:n]}
        assert G.graph["selection"]["dropped_off_path"] == 0
        for node in G:
            assert node == "input" or nx.has_path(G, "input", node)
            assert node == "logits" or nx.has_path(G, node, "logits")


def contribution(es: EdgeScores):
    """A stand-in for exact circuit runs: F = the circuit's share of Σ signed (additive)."""
    total = float(es.signed[es.valid].sum())

    def faithfulness(circuits):
        return [sum(es[e][0] for e in c) / total for c in circuits]

    return faithfulness


@pytest.mark.parametrize("seed", range(5))
def test_the_target_picks_the_smallest_prefix_whose_circuit_reaches_it(seed):
    es = full_scores(seed=seed)
    f = contribution(es)
    G = build_circuit(es, target=0.8, faithfulness=f, max_edges=500)
    search = G.graph["search"]
    kept = circuit_edges(G)
    assert search["reached"] and f([kept])[0] == pytest.approx(search["faithfulness"])
    assert search["n_edges"] == G.graph["n_edges"] == len(kept)
    assert G.graph["selection"]["rule"] == "target" and G.graph["ranked_by"] == "signed"
    # one prefix fewer does not reach the target (F rises along the signed ranking here, as
    # every edge adds a share of the same sign first)
    k = search["prefix"]
    evaluated = {p: fx for p, _, fx in search["evaluations"]}
    assert k == 1 or evaluated.get(k - 1, 0.0) < 0.8
    assert len(search["evaluations"]) <= 2 * len(es.ranking()).bit_length() + 1


def test_the_signed_ranking_puts_edges_against_the_behaviour_last():
    es = scores_from({"input->logits": 1.0, "input->a0.h0<q>": -3.0, "a0.h0->logits": -2.0,
                      "input->a0.h1<q>": 0.5, "a0.h1->logits": 2.5})  # fmt: skip
    seen = []

    def f(circuits):
        seen.extend(sorted(e.id for e in c) for c in circuits)
        return [0.5] * len(circuits)

    def first(**how):
        seen.clear()
        build_circuit(es, target=0.9, faithfulness=f, **how)
        return seen[0]  # the one-edge prefix, completed into a path

    assert first(direction=1.0) == ["a0.h1->logits", "input->a0.h1<q>"]  # +2.5 first
    assert first(direction=-1.0) == ["a0.h0->logits", "input->a0.h0<q>"]  # -3.0 first
    assert first() == first(direction=-1.0)  # Σ signed = -1: the behaviour lowers L
    assert first(rank_by="score") == ["a0.h0->logits", "input->a0.h0<q>"]  # |−3.0| first


def test_an_unreached_target_keeps_the_best_circuit_and_says_so():
    es = full_scores(seed=1)
    G = build_circuit(es, target=100.0, faithfulness=contribution(es), max_edges=20)
    s = G.graph["search"]
    assert not s["reached"] and 0 < G.graph["n_edges"] <= 20
    assert s["summary"].startswith("No circuit of at most 20 edges reached faithfulness >= 100")


def test_the_target_needs_a_faithfulness_function():
    with pytest.raises(ConfigError, match="faithfulness="):
        build_circuit(scores_from(TABLE), target=0.8)
    with pytest.raises(ConfigError, match="rank_by"):
        build_circuit(scores_from(TABLE), target=0.8, faithfulness=lambda c: [1.0], rank_by="x")
