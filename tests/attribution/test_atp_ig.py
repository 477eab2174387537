"""AtP-IG (integrated gradients along each hook site's path) against exact patching: exact
where the metric is linear in the node, exact in the limit for a site holding one node, the
cancellation AtP misses recovered, and AtP's value for a vanishing perturbation."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.attribution import attribute_nodes
from circuitgraph.errors import CircuitGraphWarning, ConfigError
from circuitgraph.nodes import Node, enumerate_nodes

from ..conftest import only_first_differs, random_pairs
from .conftest import EPS, mixed_pairs, reference_effects


def test_exact_where_the_metric_is_linear_in_the_node(linear_attn):
    model, info = linear_attn
    p = mixed_pairs()
    nodes = enumerate_nodes(info, ["head", "v"])
    nodes += [n.at(t) for n in nodes for t in (0, 4)]
    got = attribute_nodes(model, p, method="atp-ig", nodes=nodes, steps=2, batch_size=4)
    assert torch.allclose(got.signed, reference_effects(model, p, nodes), atol=1e-10)


def test_a_site_holding_one_node_follows_its_own_path_to_the_exact_effect(tiny_gpt2):
    # An MLP's output is alone at its hook: the integral over its own straight path is the
    # exact effect, which the midpoint rule approaches as the steps grow.
    model, info = tiny_gpt2
    p = random_pairs(6, seed=2)
    nodes = enumerate_nodes(info, ["mlp"])
    exact = attribute_nodes(model, p, method="exact", nodes=nodes).signed
    atp_err = (attribute_nodes(model, p, method="atp", nodes=nodes).signed - exact).abs().max()
    errs = [
        float((attribute_nodes(model, p, method="atp-ig", nodes=nodes, steps=m).signed - exact)
              .abs().max())
        for m in (2, 8, 32)
    ]  # fmt: skip
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02 * float(exact.abs().max())
    assert float(atp_err) > 10 * errs[2]


def test_the_cancellation_atp_misses_is_recovered(cancelling):
    # m0's path from on to off crosses MLP1's kink at the midpoint: the average gradient is
    # 1/2 (direct +1, through MLP1 −1 while it is on), so Î = −1/2 = the exact effect.
    model, info, pairs = cancelling
    nodes = enumerate_nodes(info, ["mlp"])
    got = attribute_nodes(model, pairs, method="atp-ig", nodes=nodes, steps=2)
    assert got[Node("mlp", 0)][0] == pytest.approx(-0.5)
    assert got[Node("mlp", 1)][0] == pytest.approx(0.5)


def test_a_vanishing_perturbation_gives_atp(twin_gpt2):
    model, info = twin_gpt2
    p = mixed_pairs(twins=True)
    nodes = enumerate_nodes(info, ["head", "q", "k", "v", "mlp"])
    got = attribute_nodes(model, p, method="atp-ig", nodes=nodes, steps=3, batch_size=4)
    want = reference_effects(model, p, nodes)
    assert torch.allclose(got.signed / EPS, want / EPS, atol=1e-5)
    assert (want / EPS).abs().max() > 0.1


def test_pass_counts_modes_and_bad_options(tiny_llama, pairs):
    model, info = tiny_llama
    nodes = enumerate_nodes(info, ["head", "k", "mlp"])
    got = attribute_nodes(model, pairs, method="atp-ig", nodes=nodes, steps=3)
    sites = 3 * info.n_layers  # hook_z, hook_k and the MLP output, per layer
    assert (got.forward_passes, got.backward_passes) == (2 + 3 * sites, 3 * sites)
    den = attribute_nodes(model, pairs, method="atp-ig", nodes=nodes, steps=3, mode="denoising")
    swapped = attribute_nodes(model, pairs.swapped(), method="atp-ig", nodes=nodes, steps=3)
    assert torch.allclose(den.signed, swapped.signed, atol=1e-6)
    with pytest.raises(ConfigError, match="integration step"):
        attribute_nodes(model, pairs, method="atp-ig", nodes=nodes, steps=0)
    for hp in model.hook_dict.values():
        assert not hp.fwd_hooks and not hp.bwd_hooks, hp.name


@pytest.mark.parametrize("method", ["atp-ig", "atp*-mean"])
def test_pairs_with_clean_equal_to_corrupt_add_exact_zeros(tiny, pairs, method):
    # Every pair but the first is identical: the mean over n pairs is the first pair's / n.
    model, info = tiny
    nodes = enumerate_nodes(info, ["head", "q", "k", "v", "mlp"])
    one = {"method": method, "nodes": nodes, "batch_size": 1}
    with pytest.warns(CircuitGraphWarning, match=f"{len(pairs) - 1} of {len(pairs)} pairs"):
        mixed = attribute_nodes(model, only_first_differs(pairs), **one)
    alone = attribute_nodes(model, pairs.select(slice(0, 1)), **one)
    tol = 1e-4 * float(alone.signed.abs().max())
    assert torch.allclose(mixed.signed * len(pairs), alone.signed, rtol=1e-4, atol=tol)
    assert alone.signed.abs().max() > 1e-3
