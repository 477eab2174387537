"""Baselines and verification: honest pass counts, exactness where they patch singletons."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.attribution import attribute_nodes, verify_nodes
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import enumerate_nodes


def test_subsampling_ranks_an_additive_model_like_exact_patching(additive):
    model, info, pairs = additive
    nodes = enumerate_nodes(info, ["v"], per_position=True, seq_len=pairs.seq_len)
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    sub = attribute_nodes(model, pairs, method="subsampling", nodes=nodes, n_subsets=400, p=0.5)
    assert sub.forward_passes == 402
    assert torch.corrcoef(torch.stack([sub.signed, truth.signed]))[0, 1] > 0.9
    assert sub.top_k(1) == truth.top_k(1)


def test_blocks_split_to_single_nodes_equal_exact_patching(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    nodes = enumerate_nodes(info, ["head", "mlp", "k"])
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    full = attribute_nodes(model, pairs, method="blocks", nodes=nodes, block_size=4, budget=1e9)
    assert full.meta["final_blocks"] == len(nodes)
    assert torch.allclose(full.signed, truth.signed, atol=1e-6)
    assert full.nodes == truth.nodes
    assert full.forward_passes > len(nodes)  # every split block was patched once


def test_blocks_respect_the_budget_and_rank_big_blocks_first(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    nodes = enumerate_nodes(info, ["head", "mlp", "k"])
    cheap = attribute_nodes(model, pairs, method="blocks", nodes=nodes, block_size=5, budget=14)
    assert cheap.forward_passes <= 14
    assert cheap.meta["final_blocks"] < len(nodes)


def test_random_order_is_seeded(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    nodes = enumerate_nodes(info, ["head"])
    a = attribute_nodes(model, pairs, method="random", nodes=nodes, seed=1)
    b = attribute_nodes(model, pairs, method="random", nodes=nodes, seed=1)
    c = attribute_nodes(model, pairs, method="random", nodes=nodes, seed=2)
    assert a.ranking() == b.ranking() != c.ranking()
    assert a.forward_passes == 0 and torch.count_nonzero(a.signed) == 0


def test_verification_patches_the_top_nodes_exactly(tiny_llama, pairs):
    model, _info = tiny_llama
    est = attribute_nodes(model, pairs, method="atp*", kinds=["head", "k", "mlp"])
    truth = attribute_nodes(model, pairs, method="exact", nodes=list(est.nodes))
    v = verify_nodes(model, pairs, est, k=4)
    assert list(v.nodes) == est.top_k(4)
    for node, t in zip(v.nodes, v.true.tolist(), strict=True):
        assert t == pytest.approx(truth[node][0], abs=1e-6)
        assert v.estimated[v.nodes.index(node)] == pytest.approx(est[node][0])
    assert v.forward_passes == 6
    assert len(verify_nodes(model, pairs, est, budget=5).nodes) == 3
    assert len(verify_nodes(model, pairs, est, k=10, budget=5).nodes) == 3
    rows = v.rows()
    assert rows[0]["rank"] == 1 and rows[0]["node"] == v.nodes[0].id
    assert v.nodes[0].id in v.table()
    assert v.max_abs_error == pytest.approx(float((v.estimated - v.true).abs().max()))
    with pytest.raises(ConfigError, match="budget"):
        verify_nodes(model, pairs, est, budget=2)
