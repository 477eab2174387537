"""atp*-mean: GradDrop with |·| after the mean over pairs. One pair gives AtP*'s score; the
cut backward matches an independently cut forward; effects that flip sign between pairs
cancel as they do in exact patching."""

from __future__ import annotations

import torch

from circuitgraph.attribution import attribute_nodes
from circuitgraph.nodes import Node, enumerate_nodes

from ..conftest import random_pairs
from .conftest import mixed_pairs, reference_effects
from .test_graddrop import _cut_forward_effects


def test_one_pair_scores_as_atp_star(tiny):
    model, info = tiny
    one = random_pairs(1, seed=4)
    nodes = enumerate_nodes(info, ["head", "q", "k", "v", "mlp"])
    star = attribute_nodes(model, one, method="atp*", nodes=nodes)
    mean = attribute_nodes(model, one, method="atp*-mean", nodes=nodes)
    assert torch.allclose(mean.score, star.score, atol=1e-6)
    assert torch.allclose(mean.signed, star.signed, atol=1e-6)
    assert (mean.forward_passes, mean.backward_passes) == (
        star.forward_passes,
        star.backward_passes,
    )


def test_dropped_backward_matches_a_detached_forward_after_the_mean(twin_gpt2):
    # Two layers: for layer-0 nodes the score is |E Î_1| with Î_1 read from a forward pass
    # in which layer 1's writes are detached.
    model, info = twin_gpt2
    p = mixed_pairs(seed=3)
    nodes = enumerate_nodes(info, ["head", "v", "mlp"], layers=[0])
    nodes += [Node("neuron", 0, 3), Node("head", 0, 1, position=4)]
    cut = _cut_forward_effects(model, p, nodes, cut_layer=1)
    got = attribute_nodes(model, p, method="atp*-mean", nodes=nodes)
    assert torch.allclose(got.score, cut.mean(0).abs(), atol=1e-10)
    assert (cut.abs().mean(0) - cut.mean(0).abs()).max() > 1e-3, "signs must vary across pairs"


def test_effects_that_flip_sign_between_pairs_cancel_as_in_exact_patching(linear_attn):
    # Each pair and its swap: a head output (the metric is affine in it) has opposite effects
    # on the two, so its exact mean effect is 0; AtP* (E|Î|) still scores it, atp*-mean not.
    model, info = linear_attn
    p = mixed_pairs(seed=2)
    both = p.concat(p.swapped())
    nodes = enumerate_nodes(info, ["head"])
    exact = reference_effects(model, both, nodes)
    star = attribute_nodes(model, both, method="atp*", nodes=nodes)
    mean = attribute_nodes(model, both, method="atp*-mean", nodes=nodes)
    assert exact.abs().max() < 1e-10
    assert star.score.min() > 1e-2
    assert mean.score.abs().max() < 1e-10


def test_a_cancelling_node_is_still_found(cancelling):
    model, info, pairs = cancelling
    nodes = enumerate_nodes(info, ["mlp"])
    got = attribute_nodes(model, pairs, method="atp*-mean", nodes=nodes)
    assert got[Node("mlp", 0)][1] == 1.0 and got.ranking()[0] == Node("mlp", 0)
