"""Exact activation patching against an independent, deliberately slow reference."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.errors import CircuitGraphWarning, MetricError, ModelStateError
from circuitgraph.nodes import Node, enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.tasks.metrics import get_metric

from ..conftest import only_first_differs, random_pairs

ALL_KINDS = ["head", "q", "k", "v", "mlp", "neuron"]


def _reference_effect(model, pairs, node: Node, metric_name: str, mode: str, ablation: str):
    """One plain hooked forward per node and pair, written without the library's helpers."""
    metric = get_metric(metric_name)
    layer, idx, pos = node.layer, node.index, node.position
    name = {
        "head": f"blocks.{layer}.attn.hook_z",
        "q": f"blocks.{layer}.attn.hook_q",
        "k": f"blocks.{layer}.attn.hook_k",
        "v": f"blocks.{layer}.attn.hook_v",
        "mlp": f"blocks.{layer}.hook_mlp_out",
        "neuron": f"blocks.{layer}.mlp.hook_post",
    }[node.kind]
    effects = []
    for i in range(len(pairs)):
        one = pairs.select(slice(i, i + 1))
        base, src = (one.clean, one.corrupt) if mode == "noising" else (one.corrupt, one.clean)
        store = {}

        def grab(act, hook):
            store["a"] = act.clone()

        with torch.no_grad():
            model.run_with_hooks(src, fwd_hooks=[(name, grab)])
            clean_logits = model(one.clean)[0, one.answer_pos[0]][None]
            ref = clean_logits.log_softmax(-1)
            base_logits = model(base)[0, one.answer_pos[0]][None]
            value = {"zero": torch.zeros_like(store["a"]), "resample": store["a"]}[ablation]

            def patch(act, hook):
                act = act.clone()
                if pos is not None and pos >= act.shape[1]:
                    return act  # the pair is shorter than this position: nothing to patch
                p = slice(None) if pos is None else pos
                if idx is None:
                    act[:, p] = value[:, p]
                else:
                    act[:, p, idx] = value[:, p, idx]
                return act

            logits = model.run_with_hooks(base, fwd_hooks=[(name, patch)])
            patched = logits[0, one.answer_pos[0]][None]
        effects.append(float(metric(patched, one, ref) - metric(base_logits, one, ref)))
    return sum(effects) / len(effects)


@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_exact_matches_slow_reference_all_kinds(tiny, pairs, metric):
    model, info = tiny
    nodes = enumerate_nodes(info, ALL_KINDS)
    # neurons: check a spread subset; the batched path is the same code for all of them
    nodes = [n for n in nodes if n.kind != "neuron" or n.index in (0, 7, info.d_mlp - 1)]
    got = patch_nodes(model, pairs, nodes, metric, batch_size=4, max_rows=20)
    for n in nodes:
        want = _reference_effect(model, pairs, n, metric, "noising", "resample")
        assert got[n][0] == pytest.approx(want, abs=1e-5), n.id
        assert got[n][1] == pytest.approx(abs(want), abs=1e-5)
    assert any(abs(got[n][0]) > 1e-3 for n in nodes), "the test model must have real effects"


@pytest.mark.parametrize(("mode", "ablation"), [("denoising", "resample"), ("noising", "zero")])
def test_denoising_and_zero_ablation_match_reference(tiny, pairs, mode, ablation):
    model, info = tiny
    nodes = enumerate_nodes(info, ["head", "k", "mlp"])
    got = patch_nodes(model, pairs, nodes, "logprob", mode=mode, ablation=ablation, batch_size=3)
    for n in nodes:
        want = _reference_effect(model, pairs, n, "logprob", mode, ablation)
        assert got[n][0] == pytest.approx(want, abs=1e-5), n.id


def test_per_position_nodes_match_reference(tiny_llama, pairs):
    model, info = tiny_llama
    nodes = [n.at(t) for n in enumerate_nodes(info, ["q", "k"], layers=[1]) for t in (0, 3, 8)]
    got = patch_nodes(model, pairs, nodes, "logit_diff", batch_size=6)
    for n in nodes:
        want = _reference_effect(model, pairs, n, "logit_diff", "noising", "resample")
        assert got[n][0] == pytest.approx(want, abs=1e-5), n.id


def test_per_position_effects_sum_to_whole_node_for_last_layer_mlp(tiny_gpt2):
    # An MLP acts on each position separately, and in the last layer positions no longer mix,
    # so only the answer position matters: all-position patch == answer-position patch.
    model, info = tiny_gpt2
    p = random_pairs(4, vary_length=False)
    last = info.n_layers - 1
    whole = patch_nodes(model, p, [Node("mlp", last)])[Node("mlp", last)][0]
    at_answer = Node("mlp", last, position=p.seq_len - 1)
    assert patch_nodes(model, p, [at_answer])[at_answer][0] == pytest.approx(whole, abs=1e-5)


def test_mean_ablation_uses_mean_of_source_activations(tiny_gpt2):
    model, info = tiny_gpt2
    p = random_pairs(4, vary_length=False)
    same = random_pairs(4, vary_length=False)
    # With identical corrupt prompts in every pair, the mean equals each pair's own value.
    from dataclasses import replace

    p = replace(p, corrupt=same.corrupt[:1].repeat(4, 1))
    nodes = enumerate_nodes(info, ["head", "mlp"])
    mean = patch_nodes(model, p, nodes, ablation="mean")
    resample = patch_nodes(model, p, nodes, ablation="resample")
    assert torch.allclose(mean.signed, resample.signed, atol=1e-5)


def test_pairs_with_clean_equal_to_corrupt_add_exact_zeros(tiny, pairs):
    # Every pair but the first is identical; the KL metric and every node kind.
    model, info = tiny
    nodes = enumerate_nodes(info, ALL_KINDS)
    with pytest.warns(CircuitGraphWarning, match="identical clean and corrupt"):
        mixed = patch_nodes(model, only_first_differs(pairs), nodes, "kl", batch_size=1)
    alone = patch_nodes(model, pairs.select(slice(0, 1)), nodes, "kl", batch_size=1)
    assert torch.allclose(
        mixed.signed * len(pairs),
        alone.signed,
        rtol=1e-4,
        atol=1e-5 * float(alone.signed.abs().max()),
    )
    assert alone.signed.abs().max() > 1e-4


def test_all_heads_of_a_layer_equal_the_attention_output(tiny, pairs):
    model, info = tiny
    heads = enumerate_nodes(info, ["head"], layers=[0])
    names = {"z": "blocks.0.attn.hook_z", "out": "blocks.0.hook_attn_out"}
    store = {}

    def grab(act, hook):
        store[hook.name] = act.clone()

    def joint_effect(target: str, metric):
        ref_acts = {}
        with torch.no_grad():
            model.run_with_hooks(pairs.corrupt, fwd_hooks=[(names[target], grab)])
            ref_acts = store.popitem()[1]

            def put(act, hook):
                return ref_acts

            base = model(pairs.clean)
            patched = model.run_with_hooks(pairs.clean, fwd_hooks=[(names[target], put)])
        rows = torch.arange(len(pairs))
        f = get_metric("logit_diff")
        return (
            f(patched[rows, pairs.answer_pos], pairs) - f(base[rows, pairs.answer_pos], pairs)
        ).mean()

    assert len(heads) == info.n_heads
    assert joint_effect("z", None) == pytest.approx(float(joint_effect("out", None)), abs=1e-5)


def test_hooks_and_flags_are_undone_after_a_failing_metric(tiny_llama, pairs):
    model, info = tiny_llama
    flags_before = {
        f: getattr(model.cfg, f, None) for f in ("use_split_qkv_input", "use_attn_result")
    }

    def bad_metric(logits, batch, ref):
        return logits[:, 0] * float("nan")

    from circuitgraph.tasks.metrics import Metric

    with pytest.raises(MetricError):
        patch_nodes(model, pairs, enumerate_nodes(info, ["head"]), Metric("bad", bad_metric, "x"))
    for hp in model.hook_dict.values():
        assert not hp.fwd_hooks and not hp.bwd_hooks, hp.name
    assert {f: getattr(model.cfg, f, None) for f in flags_before} == flags_before


def test_train_mode_is_refused(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    model.train()
    try:
        with pytest.raises(ModelStateError, match="eval mode"):
            patch_nodes(model, pairs, enumerate_nodes(info, ["head"]))
    finally:
        model.eval()


def test_grouped_query_kv_nodes_are_kv_heads(tiny_llama):
    _, info = tiny_llama
    assert info.grouped_query and info.n_kv_heads == 2
    ks = enumerate_nodes(info, ["k"], layers=[0])
    assert [n.id for n in ks] == ["a0.kv0<k>", "a0.kv1<k>"]


def test_memory_does_not_grow_with_pairs_streaming_equals_one_batch(tiny_gpt2):
    model, info = tiny_gpt2
    p = random_pairs(12)
    nodes = enumerate_nodes(info, ["head"])
    one = patch_nodes(model, p, nodes, batch_size=12)
    streamed = patch_nodes(model, p, nodes, batch_size=5, max_rows=7)
    assert torch.allclose(one.signed, streamed.signed, atol=1e-6)


def test_patching_a_set_jointly_matches_a_hand_hooked_forward(tiny_llama, pairs):
    from circuitgraph.patching import patch_sets

    model, _info = tiny_llama
    s = [Node("head", 0, 1), Node("head", 1, 3), Node("mlp", 0), Node("k", 1, 0, grouped=True)]
    got = patch_sets(model, pairs, [s, [], s[:1]], "logit_diff", batch_size=4)
    single = patch_nodes(model, pairs, s[:1])
    assert got[1] == 0.0
    assert got[2] == pytest.approx(single.signed[0].item(), abs=1e-6)
    # Reference: all four patched in one plain forward per pair.
    names = [
        "blocks.0.attn.hook_z",
        "blocks.1.attn.hook_z",
        "blocks.0.hook_mlp_out",
        "blocks.1.attn.hook_k",
    ]
    idx = [1, 3, None, 0]
    f = get_metric("logit_diff")
    effects = []
    for i in range(len(pairs)):
        one = pairs.select(slice(i, i + 1))
        _, cache = model.run_with_cache(one.corrupt, names_filter=lambda n: n in names)
        hooks = []
        for nm, ix in zip(names, idx, strict=False):

            def put(act, hook, nm=nm, ix=ix):
                act = act.clone()
                if ix is None:
                    act[:] = cache[nm]
                else:
                    act[:, :, ix] = cache[nm][:, :, ix]
                return act

            hooks.append((nm, put))
        with torch.no_grad():
            patched = model.run_with_hooks(one.clean, fwd_hooks=hooks)[:, one.answer_pos[0]]
            base = model(one.clean)[:, one.answer_pos[0]]
        effects.append(float(f(patched, one) - f(base, one)))
    assert got[0] == pytest.approx(sum(effects) / len(effects), abs=1e-5)
