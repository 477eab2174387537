"""Edge attribution: EAP and EAP-IG against exact edge patching and an autograd reference."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.attribution import (
    EDGE_ESTIMATORS,
    EdgeSet,
    attribute_edges,
    edge_candidates,
)
from circuitgraph.errors import CircuitGraphWarning, ConfigError, DataError
from circuitgraph.nodes import Edge, Node
from circuitgraph.patching import patch_edges
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import get_metric
from circuitgraph.tasks.pairs import PromptPairs

from ..conftest import only_first_differs, random_pairs
from .conftest import mixed_pairs


def test_eap_equals_exact_for_targets_linear_in_their_input(linear_attn):
    # ln_final's divisor is frozen at 1, so the logits are affine in the residual stream and
    # logit_diff is linear in every edge into the logits: EAP is exact there.
    model, info = linear_attn
    pairs = mixed_pairs(5)
    cands = EdgeSet.full(info)
    eap = attribute_edges(model, pairs, "logit_diff", "eap", cands, batch_size=2)
    into_logits = [e for e in cands.edges() if e.dst.kind == "logits"]
    exact = patch_edges(model, pairs, into_logits, "logit_diff")
    for e in into_logits:
        assert eap[e][0] == pytest.approx(exact[e][0], abs=1e-8), e.id
    assert max(abs(exact[e][0]) for e in into_logits) > 1e-2


def test_eap_ig_equals_exact_for_targets_linear_in_their_input(linear_attn):
    # As above: ∂L/∂in_logits is the same at every point of the path, so EAP-IG is exact too.
    model, info = linear_attn
    pairs = mixed_pairs(5)
    cands = EdgeSet.full(info)
    ig = attribute_edges(model, pairs, "logit_diff", "eap-ig", cands, batch_size=2, steps=3)
    into_logits = [e for e in cands.edges() if e.dst.kind == "logits"]
    exact = patch_edges(model, pairs, into_logits, "logit_diff")
    for e in into_logits:
        assert ig[e][0] == pytest.approx(exact[e][0], abs=1e-8), e.id


def test_eap_matches_exact_for_a_vanishing_perturbation(twin_gpt2):
    # corrupt tokens are clean tokens' twins (embeddings 1e-7 apart): every edge is linear
    # to first order, so EAP / exact -> 1 for all edge kinds, q/k/v/mlp/logits targets alike.
    model, info = twin_gpt2
    pairs = mixed_pairs(4, twins=True)
    cands = EdgeSet.full(info)
    eap = attribute_edges(model, pairs, "logit_diff", "eap", cands)
    exact = attribute_edges(model, pairs, "logit_diff", "exact", cands)
    scale = exact.signed.abs().max()
    assert scale > 0
    assert torch.allclose(eap.signed, exact.signed, atol=1e-4 * float(scale), rtol=0)


def _reference_ig(model, pairs: PromptPairs, edges: list[Edge], steps: int) -> dict[Edge, float]:
    """Autograd through the bridge's own per-head input copies (split qkv), no VJP by hand."""
    metric = get_metric("logit_diff")
    out: dict[Edge, float] = {e: 0.0 for e in edges}
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        for i in range(len(pairs)):
            one = pairs.select(slice(i, i + 1))
            _, cc = model.run_with_cache(one.clean)
            _, cn = model.run_with_cache(one.corrupt)

            def out_of(cache, n: Node):
                if n.kind == "input":
                    return cache["hook_embed"]
                if n.kind == "mlp":
                    return cache[f"blocks.{n.layer}.hook_mlp_out"]
                return (
                    cache[f"blocks.{n.layer}.attn.hook_z"][:, :, n.index]
                    @ model.W_O[n.layer, n.index]
                )

            for k in range(1, steps + 1):
                emb = cn["hook_embed"] + k / steps * (cc["hook_embed"] - cn["hook_embed"])
                store = {}

                def keep(act, hook, name=None):
                    act.retain_grad()
                    store[hook.name] = act

                names = []
                for e in edges:
                    d = e.dst
                    names.append(
                        f"blocks.{d.layer}.hook_{d.kind}_input"
                        if d.kind in "qkv"
                        else f"blocks.{d.layer}.hook_mlp_in"
                        if d.kind == "mlp"
                        else "ln_final.hook_in"
                    )
                leaf = emb.clone().requires_grad_(True)
                fwd = [("hook_embed", lambda a, hook: leaf)]
                fwd += [(n, lambda a, hook: a.clone()) for n in sorted(set(names))]
                grads = {}

                def grab(name):
                    def h(g, hook):
                        grads[name] = g

                    return h

                with model.hooks(
                    fwd_hooks=fwd, bwd_hooks=[(n, grab(n)) for n in sorted(set(names))]
                ):
                    logits = model(one.clean)[:, one.answer_pos[0]]
                    metric(logits, one).sum().backward()
                for e, n in zip(edges, names, strict=False):
                    g = grads[n][0]
                    if e.dst.kind in "qkv":
                        g = g[:, e.dst.index]
                    delta = (out_of(cn, e.src) - out_of(cc, e.src))[0]
                    out[e] += float((delta * g).sum().detach()) / steps / len(pairs)
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)
    return out


@pytest.mark.parametrize("steps", [1, 3])
def test_eap_and_eap_ig_match_an_autograd_reference(arch, tmp_path_factory, steps):
    from .conftest import _hf_model, _load, _save

    torch.manual_seed(3)
    hf = _hf_model(arch, 2)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    path = str(tmp_path_factory.mktemp(f"eapref-{arch}"))
    _save(hf, path)
    model, info = _load(path)
    pairs = mixed_pairs(3)
    cands = EdgeSet.full(info)
    method = "eap" if steps == 1 else "eap-ig"
    opts = {} if steps == 1 else {"steps": steps}
    got = attribute_edges(model, pairs, "logit_diff", method, cands, batch_size=2, **opts)
    edges = cands.edges()
    sample = list(
        dict.fromkeys(
            edges[:: max(1, len(edges) // 40)]
            + [e for e in edges if e.dst.kind in ("k", "mlp")][:6]
        )
    )
    want = _reference_ig(model, pairs, sample, steps)
    # HF's RMSNorm computes in float32 even for a float64 model, while its closed-form VJP
    # here runs in float64: float32-level agreement (cancellation inside the norm's VJP).
    rel = 1e-5 if arch == "llama" else 1e-6
    for e in sample:
        assert got[e][0] == pytest.approx(want[e], abs=1e-9, rel=rel), e.id


def test_eap_ig_with_one_step_is_eap(tiny_llama):
    model, _ = tiny_llama
    pairs = random_pairs(4)
    a = attribute_edges(model, pairs, "logit_diff", "eap")
    b = attribute_edges(model, pairs, "logit_diff", "eap-ig", steps=1)
    assert torch.equal(a.signed, b.signed)


def test_eap_agrees_with_transformer_lens_attribution_patch(tiny_gpt2):
    """TransformerLens 4.3's edge AtP scores per position in the denoising convention
    ((a_clean − a_corrupt) · ∂L/∂in at the corrupt run); ours with mode="denoising" sums
    the same products over positions."""
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    model, _info = tiny_gpt2
    pairs = random_pairs(3, vary_length=False)
    pairs = PromptPairs.from_tokens(pairs.clean.tolist(), pairs.corrupt.tolist(), [7] * 3, [9] * 3)
    pos = int(pairs.answer_pos[0])

    def metric_fn(logits):
        return logits[0, pos, 7] - logits[0, pos, 9]

    theirs = attribution_patch(
        model, pairs.clean, pairs.corrupt, metric_fn, EdgeAttributionConfig(granularity="edge")
    )
    ours = attribute_edges(model, pairs, "logit_diff", "eap", mode="denoising")
    kinds = {"embed": "input", "attn_head_out": "head", "mlp_out": "mlp"}
    readers = {"q_input": "q", "k_input": "k", "v_input": "v", "mlp_in": "mlp", "logits": "logits"}
    summed: dict[Edge, float] = {}
    for (w, r), score in theirs.edge_scores.items():
        src = Node(kinds[w.kind], -1 if w.layer is None else w.layer, w.head)  # type: ignore[arg-type]
        if src.kind == "input":
            src = Node("input")
        dst = Node("logits") if r.kind == "logits" else Node(readers[r.kind], r.layer, r.head)  # type: ignore[arg-type]
        e = Edge(src, dst)
        summed[e] = summed.get(e, 0.0) + score
    assert set(summed) == set(ours.edges())
    scale = max(abs(v) for v in summed.values())
    worst = max(abs(ours[e][0] - v) for e, v in summed.items()) / scale
    assert worst < 1e-4


def test_candidates_from_node_scores(tiny_llama):
    _, info = tiny_llama
    kept = (Node("head", 0, 1), Node("head", 1, 2), Node("mlp", 0), Node("q", 1, 0))
    scores = NodeScores(kept, torch.ones(4), torch.ones(4), "atp*", "logit_diff", 1)
    c = edge_candidates(info, scores)
    # a kept q input makes its head a source: a1.h0<q> reaches the logits only through a1.h0
    assert [n.id for n in c.sources] == ["input", "a0.h1", "m0", "a1.h0", "a1.h2"]
    # a1.h2 is in KV group 1 (2 query heads per KV head); a1.h0<q> was kept by itself
    assert [n.id for n in c.targets] == [
        "a0.h1<q>", "a0.kv0<k>", "a0.kv0<v>", "m0", "a1.h0<q>", "a1.h2<q>", "a1.kv1<k>", "a1.kv1<v>", "logits",
    ]  # fmt: skip
    kv = NodeScores(
        (Node("k", 1, 1, grouped=True),), torch.ones(1), torch.ones(1), "atp*", "logit_diff", 1
    )
    # a kept grouped key input keeps every query head of its group
    assert [n.id for n in edge_candidates(info, kv).sources] == ["input", "a1.h2", "a1.h3"]
    assert not c.valid[c.sources.index(Node("head", 1, 2)), c.targets.index(Node("q", 1, 0))]


def test_a_subset_of_targets_scores_as_in_the_full_set_and_none_gives_an_empty_table(tiny_llama):
    model, info = tiny_llama
    pairs = random_pairs(3)
    full = EdgeSet.full(info)
    every = attribute_edges(model, pairs, "logit_diff", "eap", full)
    some = [t for t in full.targets if t.kind in ("k", "logits")]
    part = attribute_edges(model, pairs, "logit_diff", "eap", EdgeSet.between(full.sources, some))
    for e in part.edges():
        assert part[e][0] == pytest.approx(every[e][0], rel=1e-5, abs=1e-9), e.id
    none = attribute_edges(model, pairs, "logit_diff", "eap", EdgeSet.between(full.sources, []))
    assert none.signed.shape == (len(full.sources), 0)


def test_unknown_method_and_registry():
    assert {"eap", "eap-ig", "exact"} <= set(EDGE_ESTIMATORS)
    with pytest.raises(ConfigError, match="edge method"):
        attribute_edges(None, None, method="magic")  # type: ignore[arg-type]


def test_pairs_with_clean_equal_to_corrupt_add_zero_edges(tiny_gpt2):
    from dataclasses import replace

    model, _ = tiny_gpt2
    pairs = random_pairs(3)
    for method in ("eap", "eap-ig"):
        with pytest.raises(DataError, match="all 3 pairs are identical"):
            attribute_edges(model, replace(pairs, corrupt=pairs.clean), method=method)
        with pytest.warns(CircuitGraphWarning, match="2 of 3 pairs"):
            mixed = attribute_edges(model, only_first_differs(pairs), method=method, batch_size=1)
        alone = attribute_edges(model, pairs.select(slice(0, 1)), method=method, batch_size=1)
        assert torch.allclose(
            mixed.signed * 3, alone.signed, rtol=1e-4, atol=1e-5 * float(alone.signed.abs().max())
        )


def test_eap_ig_with_kl_reads_the_clean_reference_at_every_point(tiny_gpt2):
    # With m steps and the KL metric, each interpolation point is compared with the clean
    # distribution: check against a hand-rolled average of two one-step runs.
    from circuitgraph.attribution import edges as E
    from circuitgraph.attribution.edge_grads import input_grads
    from circuitgraph.run import capture, clean_reference

    model, info = tiny_gpt2
    pairs = random_pairs(3)
    two = attribute_edges(model, pairs, "kl", "eap-ig", steps=2)
    assert torch.isfinite(two.signed).all() and two.signed.abs().max() > 0
    # at the clean point the KL gradient vanishes, so the 2-step score is half the mid-point's
    cands = EdgeSet.full(info)
    w = E.attn_weights(model)
    batch = pairs
    arch = E.Arch.of(model)
    names = sorted({arch.source_hook(s) for s in cands.sources} | {E.hooks.embed})
    acts_src = capture(model, batch.corrupt, names)
    ref = clean_reference(model, batch, get_metric("kl"))
    run = E._GradRun(model, batch.clean, batch, get_metric("kl"), ref, cands, w)
    _, acts_base, _, _ = run(None, names)
    mid = acts_src[E.hooks.embed] + 0.5 * (acts_base[E.hooks.embed] - acts_src[E.hooks.embed])
    point, _, _, _ = run(mid, ())
    grads = input_grads(model, point.groups, point.grads, point.acts, w, len(cands.targets), mid)
    delta = E.source_deltas(model, acts_base, acts_src, cands.sources, w)
    want = E._contract(E._flat(delta), grads) / 2 / len(pairs) * cands.valid
    assert torch.allclose(two.signed, want, atol=1e-6)


# --------------------------------------------------------------------------------------
# Edge AtP*
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("saturated", [False, True])
def test_edge_atp_star_equals_exact_for_qk_edges_into_a_linear_attention_layer(
    linear_attn, saturated_attn, saturated
):
    # One attention layer, MLP zeroed, final norm's divisor frozen: the metric is linear in
    # the head output, so pushing Δout through the norm and W_Q/W_K exactly and recomputing
    # the pattern leaves nothing linearised. Saturated: plain EAP is far off there.
    model, info = saturated_attn if saturated else linear_attn
    pairs = mixed_pairs(5)
    cands = EdgeSet.full(info)
    qk = [e for e in cands.edges() if e.dst.kind in ("q", "k")]
    star = attribute_edges(model, pairs, "logit_diff", "atp*", cands)
    exact = patch_edges(model, pairs, qk, "logit_diff")
    for e in qk:  # Llama's norm runs in float32 even in a float64 model: float32-level agreement
        assert star[e][0] == pytest.approx(exact[e][0], abs=1e-6, rel=2e-6), e.id
    assert max(abs(exact[e][0]) for e in qk) > 1e-2
    if saturated:
        eap = attribute_edges(model, pairs, "logit_diff", "eap", cands)
        worst = max(
            abs(eap[e][0] - exact[e][0]) / abs(exact[e][0]) for e in qk if abs(exact[e][0]) > 1e-2
        )
        assert worst > 0.5


def test_edge_atp_star_signed_equals_eap_off_qk_targets_and_graddrop_of_direct_edges(tiny):
    model, info = tiny
    pairs = random_pairs(4)
    cands = EdgeSet.full(info)
    star = attribute_edges(model, pairs, "logit_diff", "atp*", cands)
    eap = attribute_edges(model, pairs, "logit_diff", "eap", cands)
    for e in cands.edges():
        if e.dst.kind in ("v", "mlp", "logits"):
            assert star[e][0] == pytest.approx(eap[e][0], abs=1e-5), e.id
    # last-layer targets have no layer above them to cut: GradDrop leaves E|Î| per pair,
    # which is |E Î| when there is one pair.
    one = pairs.select(slice(0, 1))
    s1 = attribute_edges(model, one, "logit_diff", "atp*", cands)
    last = info.n_layers - 1
    for e in cands.edges():
        if e.dst.kind == "logits" or e.dst.layer == last:
            assert s1[e][1] == pytest.approx(abs(s1[e][0]), abs=1e-6), e.id


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_tiles_under_a_small_memory_budget_give_the_same_scores(tiny_llama, method):
    """A budget of a few residual-stream copies forces many source chunks and target blocks
    (and recomputed source outputs); the scores are those of one big product."""
    from circuitgraph.attribution.edges import _layer_chunks

    model, info = tiny_llama
    pairs = random_pairs(3)
    whole = attribute_edges(model, pairs, "logit_diff", method)
    copy = pairs.seq_len * info.d_model * 4  # bytes of one residual stream of one pair
    tiled = attribute_edges(model, pairs, "logit_diff", method, max_memory=6 * 3 * copy)
    assert (tiled.signed - whole.signed).abs().max() <= 1e-6 * whole.signed.abs().max()
    assert len(_layer_chunks(EdgeSet.full(info).sources, 3)) == 1 + info.n_layers
    with pytest.raises(ConfigError, match="max_memory"):
        attribute_edges(model, pairs, "logit_diff", method, max_memory=0)
