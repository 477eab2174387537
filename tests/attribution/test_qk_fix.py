"""The QK fix against exact patching of query and key nodes, where the softmax is the only
non-linearity (one attention layer, metric affine in the head outputs)."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.arch import Arch, hooks
from circuitgraph.attribution import attribute_nodes
from circuitgraph.attribution.qk_fix import (
    check_layer,
    key_effects,
    key_whole_effects,
    prepare_layer,
    query_effects,
)
from circuitgraph.errors import ModelStateError
from circuitgraph.nodes import enumerate_nodes

from .conftest import mixed_pairs, native, reference_effects

# Llama's attention takes its softmax in float32 even in a float64 model: 1e-7 is its floor.
TOL = 1e-6


def _qk_nodes(info, seq_len: int):
    whole = enumerate_nodes(info, ["q", "k"])
    return whole + [n.at(t) for n in whole for t in range(seq_len)]


def _pattern(model, tokens) -> torch.Tensor:
    store = {}
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=[(hooks.pattern(0), lambda a, hook: store.setdefault("p", a))]),
    ):
        model(tokens)
    return store["p"]


@pytest.fixture(params=["plain", "saturated"])
def attn_model(request, linear_attn, saturated_attn):
    return linear_attn if request.param == "plain" else saturated_attn


def test_qk_fix_equals_exact_patching_of_queries_and_keys(attn_model):
    # GPT-2 and Llama (rotary, 4 query heads reading 2 KV heads); whole heads and every position.
    model, info = attn_model
    p = mixed_pairs()
    nodes = _qk_nodes(info, p.seq_len)
    got = attribute_nodes(model, p, method="atp+qkfix", nodes=nodes, batch_size=4)
    want = reference_effects(model, p, nodes)
    assert torch.allclose(got.signed, want, atol=TOL)
    assert want.abs().max() > 0.1
    if info.grouped_query:
        assert all(n.grouped for n in nodes if n.kind == "k")


def test_saturated_attention_defeats_plain_atp_but_not_the_qk_fix(saturated_attn):
    model, info = saturated_attn
    p = mixed_pairs()
    off_bos = _pattern(model, p.clean)[..., 1:, 1:]  # beyond the first query and key
    assert off_bos.max() > 0.999
    nodes = _qk_nodes(info, p.seq_len)
    want = reference_effects(model, p, nodes)
    plain = attribute_nodes(model, p, method="atp", nodes=nodes)
    fixed = attribute_nodes(model, p, method="atp+qkfix", nodes=nodes)
    big = want.abs() > 0.1
    plain_err = ((plain.signed - want).abs() / want.abs())[big]
    assert plain_err.max() > 0.5, "plain AtP should be far off on saturated attention"
    assert torch.allclose(fixed.signed, want, atol=TOL)


def test_float32_saturated_attention_stays_finite_and_close(saturated_attn):
    # The same model in float32: log-space formulas keep full precision, no NaN.
    model, info = saturated_attn
    p = mixed_pairs(seed=4)
    nodes = _qk_nodes(info, p.seq_len)
    want = reference_effects(model, p, nodes)
    model.to(torch.float32)
    try:
        got = attribute_nodes(model, p, method="atp+qkfix", nodes=nodes)
    finally:
        model.to(torch.float64)
    assert torch.isfinite(got.signed).all()
    assert torch.allclose(got.signed, want, atol=5e-5)


def _brute_force(scores, q_c, q_n, k_c, k_n, scale, grad, kind, pos):
    """Σ (A' − A)·g with A' recomputed by brute force in float64 for one patched position."""
    s = scores.double()
    t = s.shape[-1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    rep = q_c.shape[2] // k_c.shape[2]
    q = (q_n if kind == "q" else q_c).double().clone()
    k = (k_n if kind == "k" else k_c).double().clone()
    if kind == "q":
        q[:, :pos], q[:, pos + 1 :] = q_c[:, :pos].double(), q_c[:, pos + 1 :].double()
    else:
        k[:, :pos], k[:, pos + 1 :] = k_c[:, :pos].double(), k_c[:, pos + 1 :].double()
    new = s + scale * torch.einsum("bthd,bshd->bhts", q.double(), k.repeat_interleave(rep, 2))
    new = new - scale * torch.einsum(
        "bthd,bshd->bhts", q_c.double(), k_c.double().repeat_interleave(rep, 2)
    )
    a = s.masked_fill(~mask, float("-inf")).softmax(-1)
    a2 = new.masked_fill(~mask, float("-inf")).softmax(-1)
    return ((a2 - a) * grad.double()).sum(-1)


def test_extreme_saturation_in_float32_matches_a_float64_brute_force():
    # Scores 20 apart (1 − A ≈ 2e-9, below float32's resolution of A near 1); keys moved both
    # ways by a few units, so A' swings far from A.
    g = torch.Generator().manual_seed(0)
    b, t, h, kv, d = 2, 6, 4, 2, 8
    q_c, q_n = (torch.randn(b, t, h, d, generator=g) for _ in range(2))
    k_c, k_n = (torch.randn(b, t, kv, d, generator=g) for _ in range(2))
    scale = 0.35
    rep = h // kv
    base = scale * torch.einsum("bthd,bshd->bhts", q_c, k_c.repeat_interleave(rep, 2))
    boost = torch.zeros(b, h, t, t)
    boost[..., torch.arange(t), torch.arange(t)] = 20.0  # each query sits on itself
    scores = base + boost
    grad = torch.randn(b, h, t, t, generator=g)
    lp = prepare_layer(scores, q_c, q_n, k_c, k_n, scale, frozenset({"q", "k_pos", "k_all"}))
    got_k = key_effects(lp, grad, kv)  # [b, s, kv]
    got_q = query_effects(lp, grad)  # [b, t, h]
    for pos in range(t):
        want_k = _brute_force(scores, q_c, q_n, k_c, k_n, scale, grad, "k", pos).sum(-1)
        want_k = want_k.view(b, kv, rep).sum(-1)
        assert torch.allclose(got_k[:, pos].double(), want_k, rtol=1e-4, atol=1e-5)
        want_q = _brute_force(scores, q_c, q_n, k_c, k_n, scale, grad, "q", pos)[:, :, pos]
        assert torch.allclose(got_q[:, pos].double(), want_q, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(key_whole_effects(lp, grad, kv)).all()


def test_attention_scale_is_read_per_layer(twin_gpt2):
    # scale_attn_by_inverse_layer_idx: layer l's scale is 1/(√d_head·(l+1)).
    model, info = twin_gpt2
    arch = Arch.of(model)
    for layer in range(info.n_layers):
        assert arch.scale(layer) == pytest.approx(info.d_head**-0.5 / (layer + 1), rel=1e-6)


def test_native_bridge_scores_come_from_the_pattern():
    # The TL-native bridge fires hook_attn_scores with the pattern; log-probabilities stand in
    # for the scores. Without norms the metric is linear in the head output, so the QK fix
    # must equal exact patching of each q and k node.
    from circuitgraph.patching import patch_nodes

    model, _info = native(1, 16, 4, 4, 12, attn_only=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.7)
    p = mixed_pairs(n=3, t_max=6)
    p = type(p).from_tokens(
        (p.clean % 12).tolist(), (p.corrupt % 12).tolist(), [1, 2, 5], [3, 4, 6]
    )
    fixed = attribute_nodes(model, p, method="atp+qkfix", kinds=["q", "k"])
    exact = patch_nodes(model, p, fixed.nodes)
    assert exact.signed.abs().max() > 1e-1
    assert torch.allclose(fixed.signed, exact.signed, atol=1e-6)


def _runs(cap: float | None, scale: float = 0.5, bias: float = 0.0):
    """(pattern, q, k) of a clean and a noise run of one attention layer with soft-cap
    ``cap``, an ALiBi-like position bias and a sliding window of 3."""
    g = torch.Generator().manual_seed(1)
    t = 5
    mask = torch.ones(t, t, dtype=torch.bool).tril() & ~torch.ones(t, t, dtype=torch.bool).tril(-3)
    alibi = bias * -(torch.arange(t)[:, None] - torch.arange(t)[None, :]).float()
    out = []
    for _ in range(2):
        q, k = torch.randn(1, t, 2, 4, generator=g) * 3, torch.randn(1, t, 2, 4, generator=g) * 3
        raw = scale * torch.einsum("bthd,bshd->bhts", q, k)
        s = raw if cap is None else cap * torch.tanh(raw / cap)
        out.append(((s + alibi).masked_fill(~mask, float("-inf")).softmax(-1), q, k))
    return out


def _arch(scale: float, cap: float | None) -> Arch:
    from circuitgraph.model import ModelInfo

    info = ModelInfo("m", 1, 2, 2, 8, 4, 16, "LN", False, False, False, 10, 8)
    return Arch(info, attn_scale=(scale,), attn_softcap=cap)


def test_check_layer_accepts_the_models_own_form_and_nothing_else():
    z_v = (torch.zeros(1, 5, 2, 4), torch.zeros(1, 5, 2, 4))
    for cap, bias in ((None, 0.0), (None, 0.7), (5.0, 0.0)):  # plain, ALiBi-like, soft-capped
        clean, noise = _runs(cap, bias=bias)
        check_layer(_arch(0.5, cap), 0, clean, noise, z_v, "x")
    clean, noise = _runs(5.0)
    with pytest.raises(ModelStateError, match="misses by"):  # the cap ignored
        check_layer(_arch(0.5, None), 0, clean, noise, z_v, "node method 'atp'")
    clean, noise = _runs(None)
    with pytest.raises(ModelStateError, match="node method 'atp'"):  # a wrong scale
        check_layer(_arch(0.25, None), 0, clean, noise, z_v, "node method 'atp'")
    with pytest.raises(ModelStateError, match="misses by"):  # z is not A·v
        check_layer(_arch(0.5, None), 0, clean, noise, (torch.ones(1, 5, 2, 4), z_v[1]), "x")
