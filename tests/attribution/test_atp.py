"""AtP against exact patching: exact where the model is linear in the node, and in the limit
of a vanishing perturbation; the registry, streaming, modes and pass counts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from circuitgraph.attribution import ESTIMATORS, attribute_nodes, get_estimator
from circuitgraph.errors import CircuitGraphWarning, ConfigError, DataError, ModelStateError
from circuitgraph.nodes import Node, enumerate_nodes

from ..conftest import only_first_differs, random_pairs
from .conftest import EPS, mixed_pairs, reference_effects

ALL_KINDS = ["head", "q", "k", "v", "mlp", "neuron"]
METHODS = ["atp", "atp+qkfix", "atp+graddrop", "atp*", "exact", "subsampling", "blocks", "random"]


def _tol(scores) -> float:
    return 1e-5 * float(scores.signed.abs().max())


def _some_neurons(nodes, info):
    return [n for n in nodes if n.kind != "neuron" or n.index in (0, 5, info.d_mlp - 1)]


def test_registry_holds_every_method_and_rejects_unknown_names(tiny_gpt2, pairs):
    assert set(METHODS) <= set(ESTIMATORS)
    model, _ = tiny_gpt2
    with pytest.raises(ConfigError, match=r"atp\*.*subsampling"):
        attribute_nodes(model, pairs, method="atp-star")
    with pytest.raises(ConfigError, match="takes no options"):
        attribute_nodes(model, pairs, method="atp", n_subsets=3)
    assert get_estimator("atp*").__name__ == "atp_star"


def test_atp_is_exact_where_the_metric_is_linear_in_the_node(linear_attn):
    # The metric is affine in every head's z and v (MLP zero, final norm frozen): AtP is exact.
    model, info = linear_attn
    p = mixed_pairs()
    nodes = enumerate_nodes(info, ["head", "v"])
    nodes += [n.at(t) for n in nodes for t in range(p.seq_len)]
    got = attribute_nodes(model, p, method="atp", nodes=nodes, batch_size=4)
    want = reference_effects(model, p, nodes)
    assert torch.allclose(got.signed, want, atol=1e-10)
    assert want.abs().max() > 0.1


def test_atp_equals_exact_for_a_vanishing_perturbation(twin_gpt2):
    # Corrupt tokens are twins whose embeddings differ by EPS: every node's I = Î + O(EPS²).
    model, info = twin_gpt2
    p = mixed_pairs(twins=True)
    whole = _some_neurons(enumerate_nodes(info, ALL_KINDS), info)
    nodes = whole + [n.at(t) for n in whole if n.kind != "neuron" for t in (0, 3, 8)]
    got = attribute_nodes(model, p, method="atp", nodes=nodes, batch_size=4)
    want = reference_effects(model, p, nodes)
    assert torch.allclose(got.signed / EPS, want / EPS, atol=1e-5)
    assert (want / EPS).abs().max() > 0.1, "the perturbation must have effects"


def test_per_position_atp_matches_per_position_exact(twin_gpt2):
    model, _info = twin_gpt2
    p = mixed_pairs(twins=True, seed=5)
    got = attribute_nodes(
        model, p, method="atp", kinds=["head", "mlp", "q", "k"], per_position=True
    )
    want = reference_effects(model, p, list(got.nodes))
    assert all(n.position is not None for n in got.nodes)
    assert torch.allclose(got.signed / EPS, want / EPS, atol=1e-5)
    assert (want / EPS).abs().max() > 0.1


@pytest.mark.parametrize("method", METHODS[:-1])
def test_clean_equals_corrupt_everywhere_is_refused_by_every_method(tiny, pairs, method):
    model, info = tiny
    same = replace(pairs, corrupt=pairs.clean)
    nodes = _some_neurons(enumerate_nodes(info, ALL_KINDS), info)
    with pytest.raises(DataError, match=f"all {len(pairs)} pairs are identical"):
        attribute_nodes(model, same, method=method, nodes=nodes, batch_size=4)


@pytest.mark.parametrize("method", ["atp", "atp+qkfix", "atp+graddrop", "atp*", "exact"])
def test_pairs_with_clean_equal_to_corrupt_add_exact_zeros(tiny, pairs, method):
    # Every pair but the first is identical: the mean over n pairs is the first pair's / n.
    # Float32 forwards of different batches differ by rounding (~1e-6 of the largest effect).
    model, info = tiny
    nodes = _some_neurons(enumerate_nodes(info, ALL_KINDS), info)
    one = {"method": method, "nodes": nodes, "batch_size": 1}
    with pytest.warns(CircuitGraphWarning, match=f"{len(pairs) - 1} of {len(pairs)} pairs"):
        mixed = attribute_nodes(model, only_first_differs(pairs), **one)
    alone = attribute_nodes(model, pairs.select(slice(0, 1)), **one)
    assert torch.allclose(mixed.signed * len(pairs), alone.signed, rtol=1e-4, atol=_tol(alone))
    assert alone.signed.abs().max() > 1e-3


@pytest.mark.parametrize("method", ["atp", "atp*"])
def test_streamed_batches_give_the_same_scores(tiny, method):
    model, info = tiny
    p = random_pairs(7)
    nodes = enumerate_nodes(info, ["head", "q", "k", "v", "mlp"])
    nodes += [n.at(t) for n in nodes[:6] for t in (1, 8)]
    one = attribute_nodes(model, p, method=method, nodes=nodes, batch_size=7)
    for bs in (1, 3):
        streamed = attribute_nodes(model, p, method=method, nodes=nodes, batch_size=bs)
        assert torch.allclose(one.signed, streamed.signed, atol=1e-5)
        assert torch.allclose(one.score, streamed.score, atol=1e-5)


def test_denoising_is_noising_of_the_swapped_pairs(tiny_llama, pairs):
    model, info = tiny_llama
    nodes = enumerate_nodes(info, ["head", "k", "mlp"])
    den = attribute_nodes(model, pairs, method="atp*", nodes=nodes, mode="denoising")
    swapped = attribute_nodes(model, pairs.swapped(), method="atp*", nodes=nodes)
    assert torch.allclose(den.signed, swapped.signed, atol=1e-6)
    assert torch.allclose(den.score, swapped.score, atol=1e-6)
    assert den.meta["mode"] == "denoising"


def test_denoising_is_exact_on_a_linear_node(linear_attn):
    model, info = linear_attn
    p = mixed_pairs(seed=2)
    nodes = enumerate_nodes(info, ["head", "v", "q", "k"])
    got = attribute_nodes(model, p, method="atp+qkfix", nodes=nodes, mode="denoising")
    want = reference_effects(model, p, nodes, mode="denoising")
    assert torch.allclose(got.signed, want, atol=1e-10)


def test_pass_counts_are_per_pair(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    nodes = enumerate_nodes(info, ["head", "mlp"])
    plain = attribute_nodes(model, pairs, method="atp", nodes=nodes)
    star = attribute_nodes(model, pairs, method="atp*", nodes=nodes)
    top = attribute_nodes(model, pairs, method="atp*", nodes=[Node("mlp", 1)])
    assert (plain.forward_passes, plain.backward_passes) == (2, 1)
    # One plain backward, one per layer above the lowest node (never layer 0).
    assert (star.forward_passes, star.backward_passes) == (2, info.n_layers)
    assert top.backward_passes == 1


def test_kl_metric_runs_and_is_flat_at_the_clean_point(tiny_gpt2, pairs):
    # KL(clean || run) has zero gradient at the clean run: noising AtP sees nothing.
    model, _info = tiny_gpt2
    got = attribute_nodes(model, pairs, "kl", method="atp", kinds=["head", "mlp"])
    assert got.signed.abs().max() < 1e-6
    den = attribute_nodes(model, pairs, "kl", method="atp", kinds=["head", "mlp"], mode="denoising")
    assert den.signed.abs().max() > 1e-3


def test_hooks_are_removed_and_train_mode_refused(tiny_llama, pairs):
    model, _info = tiny_llama
    attribute_nodes(model, pairs, method="atp*")
    for hp in model.hook_dict.values():
        assert not hp.fwd_hooks and not hp.bwd_hooks, hp.name
    model.train()
    try:
        with pytest.raises(ModelStateError, match="eval mode"):
            attribute_nodes(model, pairs, method="atp")
    finally:
        model.eval()


def test_progress_counts_pairs_and_nodes_can_be_given(tiny_gpt2):
    model, _ = tiny_gpt2
    p = random_pairs(7)
    seen: list[int] = []
    got = attribute_nodes(
        model, p, method="atp*", nodes=[Node("mlp", 0)], batch_size=3, progress=seen.append
    )
    assert seen == [3, 3, 1] and [n.id for n in got.nodes] == ["m0"]


def test_bad_inputs_are_config_errors(tiny_gpt2, pairs):
    model, _ = tiny_gpt2
    with pytest.raises(ConfigError, match="max_rows"):
        attribute_nodes(model, pairs, method="exact", max_row=3)
    with pytest.raises(ConfigError, match="mode"):
        attribute_nodes(model, pairs, method="atp", mode="sideways")
    with pytest.raises(ConfigError, match="kinds"):
        attribute_nodes(model, pairs, method="atp", nodes=[Node("logits")])
    with pytest.raises(ConfigError, match="at least one node"):
        attribute_nodes(model, pairs, method="atp", nodes=[])


@pytest.mark.parametrize("method", ["atp", "atp*"])
def test_bfloat16_scores_are_accumulated_in_float64_and_stay_close(method):
    """A bf16 model's scores are summed in float64; against the same model in fp32 they
    differ by at most 2% of the largest score (measured: 0.27% on IOI), same top 5."""
    import circuitgraph as cg

    fp32, _ = cg.load_model("zoo:gpt2-4l", device="cpu")
    bf16, _ = cg.load_model("zoo:gpt2-4l", device="cpu", dtype="bfloat16")
    pairs = cg.make_pairs("ioi", fp32.tokenizer, 16, seed=0)
    full = cg.attribute_nodes(fp32, pairs, method=method)
    half = cg.attribute_nodes(bf16, pairs, method=method)
    assert half.signed.dtype == half.score.dtype == torch.float64
    assert (full.signed - half.signed).abs().max() <= 0.02 * full.signed.abs().max()
    assert half.top_k(5) == full.top_k(5)
