"""Node and edge identities, and the node → hook mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuitgraph.arch import Arch
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, Node, enumerate_nodes


@st.composite
def nodes(draw):
    kind = draw(st.sampled_from(["head", "q", "k", "v", "mlp", "neuron", "input", "logits"]))
    pos = draw(st.none() | st.integers(0, 99))
    if kind in ("input", "logits"):
        return Node(kind, position=pos)
    layer = draw(st.integers(0, 47))
    if kind == "mlp":
        return Node(kind, layer, None, pos)
    grouped = kind in ("k", "v") and draw(st.booleans())
    return Node(kind, layer, draw(st.integers(0, 4095)), pos, grouped)


@given(nodes())
def test_node_ids_round_trip(node):
    assert Node.parse(node.id) == node


@given(nodes(), nodes())
def test_edge_ids_round_trip(a, b):
    assert Edge.parse(Edge(a, b).id) == Edge(a, b)


def test_design_ids():
    assert [Node.parse(s).id for s in ["input", "a3.h5", "a3.h5<q>", "m2", "m2.n17", "logits"]] == [
        "input", "a3.h5", "a3.h5<q>", "m2", "m2.n17", "logits",
    ]  # fmt: skip
    assert Edge.parse("a0.h1->a3.h5<k>").id == "a0.h1->a3.h5<k>"


@pytest.mark.parametrize("bad", ["a3", "h5", "a3.kv1<q>", "m2.x", "a3.h5<z>", ""])
def test_bad_ids_are_refused(bad):
    with pytest.raises(ConfigError):
        Node.parse(bad)


def test_enumerate_in_topological_order(tiny_gpt2):
    _, info = tiny_gpt2
    got = enumerate_nodes(info, ["mlp", "head", "q"])
    layers = [n.layer for n in got]
    assert layers == sorted(layers)
    # within a layer: q before head outputs before the MLP
    first_layer = [n.kind for n in got if n.layer == 0]
    assert first_layer == ["q"] * 4 + ["head"] * 4 + ["mlp"]


def test_enumerate_per_position_and_neurons(tiny_gpt2):
    _, info = tiny_gpt2
    assert len(enumerate_nodes(info, ["neuron"])) == info.n_layers * info.d_mlp
    per_pos = enumerate_nodes(info, ["head"], per_position=True, seq_len=5)
    assert len(per_pos) == info.n_layers * info.n_heads * 5
    assert per_pos[1].id == "a0.h0@1"


def test_unknown_kind_and_missing_seq_len_are_refused(tiny_gpt2):
    _, info = tiny_gpt2
    with pytest.raises(ConfigError, match="node kinds"):
        enumerate_nodes(info, ["attention"])
    with pytest.raises(ConfigError, match="seq_len"):
        enumerate_nodes(info, ["head"], per_position=True)


def test_every_screened_node_has_a_hook_the_model_has(tiny):
    model, info = tiny
    for node in enumerate_nodes(info, ["head", "q", "k", "v", "mlp", "neuron"]):
        assert Arch.of(model).node_site(node).name in model.hook_dict, node.id


@pytest.mark.parametrize("per_position", [False, True])
def test_node_array_is_enumerate_nodes_without_objects(per_position):
    from circuitgraph.model import ModelInfo
    from circuitgraph.nodes import NodeArray, node_array

    info = ModelInfo("m", 3, 4, 2, 32, 8, 5, "RMS", True, True, False, 50, 32)
    kinds = ["neuron", "k", "head", "mlp", "q", "v"]
    t = 3 if per_position else None
    arr = node_array(info, kinds, per_position, t)
    listed = enumerate_nodes(info, kinds, per_position, t)
    assert arr == listed and listed == list(arr) and len(arr) == len(listed)
    assert arr[-1] == listed[-1] and list(arr[2:5]) == listed[2:5]
    assert all(arr.locate(listed[i]) == i for i in range(0, len(listed), 7))
    assert NodeArray.of(listed) == arr and arr.has_positions == per_position
    with pytest.raises(KeyError):
        arr.locate(Node("neuron", 0, 99))


def test_neuron_scores_need_no_object_per_node(tiny_gpt2):
    """attribute_nodes keeps neurons as columns: the scores hold a NodeArray, and ranking,
    lookup and the top nodes work on it."""
    from circuitgraph.attribution import attribute_nodes
    from circuitgraph.nodes import NodeArray

    from .conftest import random_pairs

    model, info = tiny_gpt2
    scores = attribute_nodes(model, random_pairs(3), method="atp*", kinds=["neuron"])
    assert isinstance(scores.nodes, NodeArray) and len(scores) == info.n_layers * info.d_mlp
    best = scores.top_k(3)
    assert scores[best[0]][1] == float(scores.score.max())
    assert scores.ranking()[:3] == best
