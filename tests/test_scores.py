"""Score containers: ranking, selection and exact JSON round trips."""

from __future__ import annotations

import json

import pytest
import torch

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, Node
from circuitgraph.scores import EdgeScores, NodeScores


def _node_scores() -> NodeScores:
    nodes = (Node("head", 0, 0), Node("head", 0, 1), Node("mlp", 0), Node("k", 1, 0, grouped=True))
    signed = torch.tensor([0.5, -3.0, 0.25, 1.0], dtype=torch.float64)
    return NodeScores(
        nodes, signed, signed.abs(), "exact", "logit_diff", 16, 6.0, 0.0, {"mode": "noising"}
    )


def _edge_scores() -> EdgeScores:
    src = (Node("input"), Node("head", 0, 0), Node("mlp", 0))
    dst = (Node("q", 0, 0), Node("q", 1, 2), Node("logits"))
    signed = torch.tensor(
        [[0.1, -0.7, 0.3], [0.0, 0.4, -0.2], [0.0, 0.9, 0.05]], dtype=torch.float64
    )
    valid = torch.tensor([[True, True, True], [False, True, True], [False, True, True]])
    return EdgeScores(
        src, dst, signed * valid, (signed * valid).abs(), valid, "eap", "logit_diff", 16
    )


def test_node_ranking_and_selection():
    s = _node_scores()
    assert [n.id for n in s.top_k(2)] == ["a0.h1", "a1.kv0<k>"]
    assert [n.id for n in s.threshold(0.5)] == ["a0.h1", "a1.kv0<k>", "a0.h0"]
    assert s["a0.h1"] == (-3.0, 3.0)
    with pytest.raises(ConfigError):
        s["a5.h5"]


def test_node_scores_json_round_trip_is_exact():
    s = _node_scores()
    back = NodeScores.from_json(json.loads(json.dumps(s.to_json())))
    assert back.nodes == s.nodes and torch.equal(back.signed, s.signed) and back.meta == s.meta


def test_edge_ranking_skips_invalid_cells():
    e = _edge_scores()
    assert len(e) == 7
    assert [x.id for x in e.top_k(2)] == ["m0->a1.h2<q>", "input->a1.h2<q>"]
    with pytest.raises(ConfigError):
        e[Edge(Node("head", 0, 0), Node("q", 0, 0))]


def test_edge_scores_json_round_trip_is_exact():
    e = _edge_scores()
    back = EdgeScores.from_json(json.loads(json.dumps(e.to_json())))
    assert back.sources == e.sources and back.targets == e.targets
    assert torch.equal(back.signed, e.signed) and torch.equal(back.valid, e.valid)
    assert set(back.to_networkx().edges) == set(e.to_networkx().edges)


def test_shape_mismatch_is_refused():
    with pytest.raises(ConfigError, match="one signed and one absolute score per node"):
        NodeScores((Node("mlp", 0),), torch.zeros(2), torch.zeros(2), "x", "y", 1)
