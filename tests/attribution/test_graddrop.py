"""GradDrop and AtP*: direct-only nodes keep their AtP value, cancellations are found, and
the cut backward matches an independently cut forward."""

from __future__ import annotations

import torch

from circuitgraph.attribution import attribute_nodes
from circuitgraph.attribution.graddrop import drop_layers, score
from circuitgraph.nodes import Node, enumerate_nodes
from circuitgraph.tasks.metrics import answer_logits, get_metric

from ..conftest import random_pairs
from .conftest import mixed_pairs


def _per_pair(model, pairs, method, nodes):
    """Î of each pair on its own, [pairs, nodes]."""
    rows = [
        attribute_nodes(model, pairs.select(slice(i, i + 1)), method=method, nodes=nodes).signed
        for i in range(len(pairs))
    ]
    return torch.stack(rows)


def test_nodes_with_only_direct_paths_score_their_atp_value(tiny):
    # Nothing reads the last layer's outputs but the unembedding: Σ_l |Î_l| = (L−1)|Î| per pair.
    model, info = tiny
    p = random_pairs(5)
    last = enumerate_nodes(info, ["head", "q", "k", "v", "mlp"], layers=[info.n_layers - 1])
    for plain, star in (("atp", "atp+graddrop"), ("atp+qkfix", "atp*")):
        want = _per_pair(model, p, plain, last).abs().mean(0)
        got = attribute_nodes(model, p, method=star, nodes=last)
        assert torch.allclose(got.score, want, atol=1e-6)
        assert torch.allclose(
            got.signed, attribute_nodes(model, p, method=plain, nodes=last).signed, atol=1e-6
        )


def test_a_cancelling_node_is_missed_by_atp_and_found_by_atp_star(cancelling):
    model, info, pairs = cancelling
    nodes = enumerate_nodes(info, ["mlp"])
    m0, m1 = Node("mlp", 0), Node("mlp", 1)
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    assert truth[m0][0] == -0.5 and truth[m1][0] == 0.5
    atp = attribute_nodes(model, pairs, method="atp", nodes=nodes)
    assert atp[m0][1] == 0.0, "direct (+1) and indirect (−1) gradients cancel"
    assert atp.ranking()[0] == m1
    for method in ("atp+graddrop", "atp*"):
        star = attribute_nodes(model, pairs, method=method, nodes=nodes)
        assert star[m0][1] == 1.0  # |Î_1(m0)| = |−1 · 1| with layer 1 cut, over L − 1 = 1
        assert star[m1][1] == 0.5  # direct only: its AtP value
        assert star.ranking()[0] == m0


def _cut_forward_effects(model, pairs, nodes, cut_layer: int):
    """Î with layer ``cut_layer``'s residual writes detached in the forward pass (an
    independent way to drop their gradient), per pair."""
    from circuitgraph.arch import Arch

    hook_site = Arch.of(model).node_site
    metric = get_metric("logit_diff")
    names = sorted({hook_site(n).name for n in nodes})
    noise = {}
    with torch.no_grad():
        model.run_with_hooks(
            pairs.corrupt,
            fwd_hooks=[(n, lambda a, hook, n=n: noise.__setitem__(n, a.clone())) for n in names],
        )
    clean = {}

    def keep(name):
        def hook(act, hook):
            act = act.clone().requires_grad_(True) if act.requires_grad else act.clone()
            clean[name] = act
            return act

        return hook

    def detach(act, hook):
        return act.detach()

    cut = [
        (f"blocks.{cut_layer}.hook_attn_out", detach),
        (f"blocks.{cut_layer}.hook_mlp_out", detach),
    ]
    with torch.enable_grad():
        logits = model.run_with_hooks(pairs.clean, fwd_hooks=[(n, keep(n)) for n in names] + cut)
        loss = metric(answer_logits(logits, pairs), pairs).sum()
        grads = dict(
            zip(
                names,
                torch.autograd.grad(loss, [clean[n] for n in names], allow_unused=True),
                strict=False,
            )
        )
    out = []
    for node in nodes:
        site = hook_site(node)
        g = grads[site.name]
        delta = noise[site.name] - clean[site.name].detach()
        prod = delta * (torch.zeros_like(delta) if g is None else g)
        prod = prod[:, :, site.index] if site.index is not None else prod
        if node.position is not None:
            prod = prod[:, node.position]
        out.append(prod.flatten(1).sum(1))
    return torch.stack(out, 1)


def test_dropped_backward_matches_a_detached_forward(twin_gpt2):
    # Two layers: for layer-0 nodes ĉ_GD = E|Î_1| (L − 1 = 1), with Î_1 the gradient read
    # when layer 1's writes are detached in the forward pass instead.
    model, info = twin_gpt2
    p = mixed_pairs(seed=3)
    nodes = enumerate_nodes(info, ["head", "v", "mlp"], layers=[0])
    nodes += [Node("neuron", 0, 3), Node("head", 0, 1, position=4)]
    want = _cut_forward_effects(model, p, nodes, cut_layer=1).abs().mean(0)
    got = attribute_nodes(model, p, method="atp+graddrop", nodes=nodes)
    assert torch.allclose(got.score, want, atol=1e-10)
    assert want.abs().max() > 1e-3


def test_one_layer_models_score_the_mean_absolute_effect(linear_attn):
    model, info = linear_attn
    p = mixed_pairs()
    nodes = enumerate_nodes(info, ["head", "q", "k", "v"])
    got = attribute_nodes(model, p, method="atp*", nodes=nodes)
    want = _per_pair(model, p, "atp+qkfix", nodes).abs().mean(0)
    assert torch.allclose(got.score, want, atol=1e-10)
    assert got.backward_passes == 1


def test_drop_layers_and_score_normalisation():
    assert drop_layers([Node("head", 0, 0)], 3) == (1, 2)
    assert drop_layers([Node("mlp", 2)], 3) == ()
    assert score(torch.tensor([6.0]), n_pairs=3, n_layers=3).tolist() == [1.0]
    assert score(torch.tensor([2.0]), n_pairs=2, n_layers=1).tolist() == [1.0]
