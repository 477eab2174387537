"""Exact edge patching against hand-hooked references."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, Node, can_feed, edge_sources, edge_targets
from circuitgraph.patching import patch_edges
from circuitgraph.tasks.metrics import get_metric

from ..conftest import random_pairs


def _source_out(model, tokens, src: Node):
    """A source's residual write, computed by hand from a plain cache."""
    _, cache = model.run_with_cache(tokens)
    if src.kind == "input":
        return cache["hook_embed"]
    if src.kind == "mlp":
        return cache[f"blocks.{src.layer}.hook_mlp_out"]
    z = cache[f"blocks.{src.layer}.attn.hook_z"][:, :, src.index]
    return z @ model.W_O[src.layer, src.index]


def _reference_edge_effect(model, pairs, edge: Edge, metric_name: str) -> float:
    metric = get_metric(metric_name)
    dst = edge.dst
    if dst.kind in ("q", "k", "v"):
        name, idx = f"blocks.{dst.layer}.hook_{dst.kind}_input", dst.index
    elif dst.kind == "mlp":
        name, idx = f"blocks.{dst.layer}.hook_mlp_in", None
    else:
        name, idx = "ln_final.hook_in", None
    effects = []
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        for i in range(len(pairs)):
            one = pairs.select(slice(i, i + 1))
            with torch.no_grad():
                delta = _source_out(model, one.corrupt, edge.src) - _source_out(
                    model, one.clean, edge.src
                )

                def shift(act, hook):
                    act = act.clone()
                    if idx is None:
                        act += delta
                    else:
                        act[:, :, idx] += delta
                    return act

                base = model(one.clean)[:, one.answer_pos[0]]
                patched = model.run_with_hooks(one.clean, fwd_hooks=[(name, shift)])[
                    :, one.answer_pos[0]
                ]
                ref = base.log_softmax(-1)
            effects.append(float(metric(patched, one, ref) - metric(base, one, ref)))
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)
    return sum(effects) / len(effects)


def _some_edges(info):
    srcs, dsts = edge_sources(info), edge_targets(info)
    edges = [Edge(s, d) for s in srcs for d in dsts if can_feed(s, d)]
    # every source kind into every target kind, without running all of them
    keep = {}
    for e in edges:
        keep.setdefault((e.src.kind, e.src.layer, e.dst.kind, e.dst.layer), e)
    return list(keep.values())


@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_exact_edges_match_hand_hooked_reference(tiny, metric):
    model, info = tiny
    pairs = random_pairs(5)
    edges = _some_edges(info)
    got = patch_edges(model, pairs, edges, metric, batch_size=3, max_rows=7)
    assert len(got) == len(edges)
    for e in edges:
        want = _reference_edge_effect(model, pairs, e, metric)
        assert got[e][0] == pytest.approx(want, abs=1e-5), e.id
    assert any(abs(got[e][0]) > 1e-3 for e in edges)
    assert not model.cfg.use_split_qkv_input and not getattr(model.cfg, "use_hook_mlp_in", False)


def test_impossible_edges_are_refused(tiny_gpt2, pairs):
    model, _ = tiny_gpt2
    with pytest.raises(ConfigError, match="does not exist"):
        patch_edges(model, pairs, [Edge.parse("a1.h0->a0.h1<q>")])
    with pytest.raises(ConfigError, match="edge target"):
        patch_edges(model, pairs, [Edge.parse("a0.h0->a1.h1")])
