"""The independent reference (tests/reference.py) is itself right, on every family.

Each check is an identity that holds exactly for a correct implementation and fails for a
wrong module table, a wrong fused-qkv layout, a wrong residual read or a wrong parallel /
sequential edge set:

* a patch with the clean value (scale 0) changes nothing;
* layouts: query h at position t moves only head h's z at t; key / value of KV head g at
  position s only the z of g's query heads at positions ≥ s; z is linear in the value,
  not in the key;
* patching every q, k and v of a layer = patching every head's z; every neuron = the MLP;
* patching a node u = patching every edge out of u jointly (the node's write reaches every
  reader), which also pins down which edges exist in parallel and sequential blocks;
* patching every edge into a target jointly = patching the target's own input (q/k/v
  node, MLP node, or the whole corrupt run for the logits);
* heads' writes sum to the attention block's write exactly where there is no post-norm;
* GPT-NeoX with the same weights, parallel vs sequential: the layer-0 MLP reads the
  attention output only in the sequential one.
"""

from __future__ import annotations

import copy

import pytest
import torch

from .families import D_VOCAB, FAMILIES, build
from .reference import RefEdge, Reference, RefNode, RefPairs, can_feed

TOL = 2e-5  # float32 models: identities hold to rounding (~1e-6 of O(1) effects)


def ref_pairs(n: int = 4, t: int = 8, seed: int = 0) -> RefPairs:
    """Random same-length pairs differing in two positions (t ≥ 3, so sliding windows bite)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, D_VOCAB, (n, t), generator=g)
    clean[:, 0] = 2
    corrupt = clean.clone()
    for i in range(n):
        for j in torch.randint(1, t, (2,), generator=g).tolist():
            corrupt[i, j] = int(torch.randint(4, D_VOCAB, (1,), generator=g))
    answer = torch.randint(4, D_VOCAB, (n,), generator=g)
    wrong = torch.randint(4, D_VOCAB, (n,), generator=g)
    return RefPairs(clean, corrupt, answer, wrong)


@pytest.fixture(scope="session")
def refs() -> dict[str, Reference]:
    torch.set_num_threads(1)
    return {}


@pytest.fixture(params=sorted(FAMILIES))
def ref(request: pytest.FixtureRequest, refs: dict[str, Reference]) -> Reference:
    """Each family's reference on one batch, built once per session."""
    name = request.param
    if name not in refs:
        refs[name] = Reference(build(name), ref_pairs())
    return refs[name]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return float((a - b).abs().max()) <= tol * (1.0 + float(b.abs().max()))


def rel_close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


def test_clean_value_changes_nothing(ref: Reference) -> None:
    last = len(ref.map.layers) - 1
    for kind in ("head", "q", "k", "v", "mlp"):
        assert float(ref.node(RefNode(kind, last, 0), scale=0.0).abs().max()) == 0.0
    assert float(ref.edge(RefNode("input"), RefNode("q", last, 0), scale=0.0).abs().max()) == 0.0
    assert float(ref.edge(RefNode("mlp", 0), RefNode("logits"), scale=0.0).abs().max()) == 0.0


def test_effects_are_not_trivial(ref: Reference) -> None:
    """Every node kind moves the metric: identities below cannot pass on zeros."""
    last = len(ref.map.layers) - 1
    for kind in ("head", "q", "k", "v", "mlp"):
        assert float(ref.node(RefNode(kind, last, 0)).abs().max()) > 1e-4, kind


def test_qkv_layout(ref: Reference) -> None:
    """q_h@t touches only z_h at t; k/v of KV head g at s only g's heads at positions ≥ s."""
    mp, layer = ref.map, len(ref.map.layers) - 1
    h_all, g_all, d = mp.n_heads, mp.n_kv, mp.d_head
    z0 = ref.clean[("z", layer)].view(ref.b, ref.t, h_all, d)

    def moved(node: RefNode, scale: float = 1.0) -> torch.Tensor:
        z = ref.nodes([node], scale, z_of=layer).view(ref.b, ref.t, h_all, d)
        return z - z0

    for h in range(h_all):
        change = moved(RefNode("q", layer, h, 4)).abs().amax((0, 3))  # [t, heads]
        expect = torch.zeros_like(change, dtype=torch.bool)
        expect[4, h] = True
        assert float(change[~expect].max()) == 0.0 and float(change[4, h]) > 1e-4, f"q{h}"
    for g in range(g_all):
        group = list(range(g * h_all // g_all, (g + 1) * h_all // g_all))
        for kind in "kv":
            change = moved(RefNode(kind, layer, g, 3)).abs().amax((0, 3))
            expect = torch.zeros_like(change, dtype=torch.bool)
            expect[3:, group] = True
            assert float(change[~expect].max()) == 0.0, f"{kind}{g} leaks"
            assert float(change[expect].max()) > 1e-4, f"{kind}{g} inert"
        # z = A v: linear in v (tiny steps stay clear of OLMo's q/k/v clipping), not in k
        v1, v2 = moved(RefNode("v", layer, g), 1e-4), moved(RefNode("v", layer, g), 2e-4)
        assert rel_close(v2, 2 * v1, 1e-2), f"v{g} not linear"
        k1, k2 = moved(RefNode("k", layer, g), 1.0), moved(RefNode("k", layer, g), 2.0)
        assert not rel_close(k2, 2 * k1, 1e-2), f"k{g} linear: it is not the key"


def test_all_qkv_equal_all_heads(ref: Reference) -> None:
    mp, layer = ref.map, len(ref.map.layers) - 1
    qkv = [RefNode("q", layer, h) for h in range(mp.n_heads)]
    qkv += [RefNode(k, layer, g) for k in "kv" for g in range(mp.n_kv)]
    heads = [RefNode("head", layer, h) for h in range(mp.n_heads)]
    assert close(ref.nodes(qkv), ref.nodes(heads))


def test_all_neurons_equal_the_mlp(ref: Reference) -> None:
    if ref.map.layers[0].down is None:
        with pytest.raises(NotImplementedError, match="neuron"):
            ref.node(RefNode("neuron", 0, 0))
        return
    n = ref.clean[("neuron", 0)].shape[-1]
    neurons = [RefNode("neuron", 0, i) for i in range(n)]
    assert close(ref.nodes(neurons), ref.node(RefNode("mlp", 0)))


def test_node_equals_all_edges_out_of_it(ref: Reference) -> None:
    full = ref.corrupt["metric"] - ref.base
    for u in (RefNode("input"), RefNode("head", 0, 1), RefNode("mlp", 0)):
        out_edges = [e for e in ref.all_edges() if e.src == u]
        node = full if u.kind == "input" else ref.node(u)
        assert close(ref.edges(out_edges), node), u


def _writers_before(ref: Reference, target: RefNode) -> list[RefNode]:
    """The input and each layer's whole attention and MLP writes that reach the target."""
    out = [RefNode("input")]
    for layer in range(len(ref.map.layers)):
        out += [RefNode("attn", layer), RefNode("mlp", layer)]
    parallel = target.kind != "logits" and ref.map.layers[target.layer].parallel
    return [s for s in out if can_feed(s, target, parallel)]


def test_all_edges_into_a_target_equal_its_input_node(ref: Reference) -> None:
    mp, last = ref.map, len(ref.map.layers) - 1
    for target in (RefNode("q", last, 1), RefNode("k", last, 0), RefNode("v", last, mp.n_kv - 1),
                   RefNode("mlp", 0), RefNode("mlp", last)):  # fmt: skip
        edges = [RefEdge(s, target) for s in _writers_before(ref, target)]
        assert close(ref.edges(edges), ref.node(target)), target
    logits = [RefEdge(s, RefNode("logits")) for s in _writers_before(ref, RefNode("logits"))]
    assert close(ref.edges(logits), ref.corrupt["metric"] - ref.base)


def test_heads_sum_to_the_attention_write_without_post_norm(ref: Reference) -> None:
    heads = sum(ref.out_delta(RefNode("head", 0, h)) for h in range(ref.map.n_heads))
    attn = ref.out_delta(RefNode("attn", 0))
    assert isinstance(heads, torch.Tensor)
    if ref.map.layers[0].attn_post is None:
        assert close(heads, attn)
    else:  # a post-norm mixes the heads: their writes do not add up
        assert not close(heads, attn, 1e-2)


def test_parallel_and_sequential_neox_differ_where_expected() -> None:
    parallel = build("gpt_neox")
    sequential = copy.deepcopy(parallel)
    sequential.config.use_parallel_residual = False
    for layer in sequential.gpt_neox.layers:
        layer.use_parallel_residual = False
    pairs = ref_pairs()
    par, seq = Reference(parallel, pairs), Reference(sequential, pairs)
    assert par.map.layers[0].parallel and not seq.map.layers[0].parallel
    # layer 0's attention reads the same input in both; its MLP reads it only in parallel
    assert torch.equal(par.clean[("attn", 0)], seq.clean[("attn", 0)])
    assert not close(par.clean[("mlp", 0)], seq.clean[("mlp", 0)], 1e-3)
    # head 0.0 feeds MLP 0 only in the sequential model
    head, mlp0 = RefNode("head", 0, 0), RefNode("mlp", 0)
    with pytest.raises(ValueError, match="does not feed"):
        par.edge(head, mlp0)
    assert float(seq.edge(head, mlp0).abs().max()) > 1e-5
    # and each model's node patch is its own edge set: with or without head → MLP 0
    for ref in (par, seq):
        out_edges = [e for e in ref.all_edges() if e.src == head]
        assert (RefEdge(head, mlp0) in out_edges) == (ref is seq)
        assert close(ref.edges(out_edges), ref.node(head))
