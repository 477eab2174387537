"""Prefix reuse (issue 13): a patched forward that starts at its lowest patched layer, on the
base run's residual stream, and maps only the answer positions to logits, gives what the
full forward gives, to 1e-5 of the largest effect, on every zoo model.

Every family of ``tests/test_families.py`` runs its exact node and edge checks against the
independent reference with prefix reuse on (the default), so these tests compare the two
paths of the library directly: nodes in the first and the last layer, per-position nodes,
neurons, every kind of edge (into the logits: no block runs at all), and the fallback to full
forwards where a model's blocks share state outside the residual stream.
"""

from __future__ import annotations

import pytest
import torch

import circuitgraph as cg
from circuitgraph.arch import hooks
from circuitgraph.attribution import EdgeSet
from circuitgraph.model import load_model
from circuitgraph.patching import patch_edges, patch_nodes, patch_sets
from circuitgraph.run import FULL_FORWARD_ENV, full_forward, prefix_reuse

from ..conftest import random_pairs

ZOO = ["zoo:attn-only-2l", "zoo:gpt2-4l", "zoo:llama-gqa-4l"]
TOL = 1e-5


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request: pytest.FixtureRequest):
    torch.set_num_threads(1)
    return cg.load_model(request.param)


def _zoo_pairs(info: cg.ModelInfo, n: int = 5) -> cg.PromptPairs:
    """Random pairs differing at a few positions (lengths vary: answer positions differ)."""
    from circuitgraph.bench.common import random_pairs as bench_pairs

    return bench_pairs(info.d_vocab, n, 9, seed=3)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.abs().max())
    assert scale > 1e-4, "every effect is ~0: the comparison would prove nothing"
    return float((got.double() - want.double()).abs().max()) / scale


def _nodes(info: cg.ModelInfo) -> list[cg.Node]:
    """Every head, q/k/v and MLP node of the first and last layer, per-position q/k nodes,
    and neurons (where the model has MLPs)."""
    ends = {0, info.n_layers - 1}
    kinds = ["head", "q", "k", "v"] + ([] if info.attn_only else ["mlp"])
    nodes = [n for n in cg.enumerate_nodes(info, kinds) if n.layer in ends]
    nodes += [n.at(t) for n in nodes if n.kind in ("q", "k") and n.index == 0 for t in (2, 6)]
    if not info.attn_only:
        nodes += [cg.Node("neuron", layer, i) for layer in sorted(ends) for i in (0, 5)]
    return nodes


def test_the_zoo_models_reuse_the_prefix(zoo_model) -> None:
    model, _ = zoo_model
    assert prefix_reuse(model)
    with full_forward():
        assert not prefix_reuse(model)


def test_node_effects_equal_the_full_forwards(zoo_model) -> None:
    model, info = zoo_model
    pairs, nodes = _zoo_pairs(info), _nodes(info)
    # batch_size 2: several batches, the last one shorter; max_rows 6: several passes per layer
    got = patch_nodes(model, pairs, nodes, batch_size=2, max_rows=6).signed
    with full_forward():
        want = patch_nodes(model, pairs, nodes, batch_size=2, max_rows=6).signed
    assert _rel(got, want) <= TOL


@pytest.mark.parametrize(("mode", "ablation"), [("denoising", "resample"), ("noising", "mean")])
def test_node_sets_across_layers_equal_the_full_forwards(zoo_model, mode, ablation) -> None:
    model, info = zoo_model
    last = info.n_layers - 1
    sets = [
        [cg.Node("head", last, 0)],
        [cg.Node("head", 0, 1), cg.Node("head", last, 1)],  # starts at 0: runs every block
        [],
        [cg.Node("v", last, 0), cg.Node("k", 1, 0)],
    ]
    pairs = _zoo_pairs(info)
    got = patch_sets(model, pairs, sets, "logit_diff", mode, ablation, batch_size=3)
    with full_forward():
        want = patch_sets(model, pairs, sets, "logit_diff", mode, ablation, batch_size=3)
    assert got[2] == 0.0
    assert _rel(got, want) <= TOL


def test_edge_effects_equal_the_full_forwards(zoo_model) -> None:
    model, info = zoo_model
    edges = EdgeSet.full(info).edges()
    # every edge into the last layer and the logits, and into q/k/v of layer 1
    edges = [e for e in edges if e.dst.kind == "logits" or e.dst.layer in (1, info.n_layers - 1)]
    pairs = _zoo_pairs(info, 4)
    got = patch_edges(model, pairs, edges, batch_size=2, max_rows=8).signed
    with full_forward():
        want = patch_edges(model, pairs, edges, batch_size=2, max_rows=8).signed
    assert _rel(got, want) <= TOL


def test_the_environment_forces_full_forwards(monkeypatch, zoo_model) -> None:
    model, _ = zoo_model
    monkeypatch.setenv(FULL_FORWARD_ENV, "1")
    assert not prefix_reuse(model)
    with full_forward(on=False):
        assert prefix_reuse(model)


def test_blocks_sharing_state_outside_the_residual_fall_back_to_full_forwards(gpt2_dir) -> None:
    """Block 1 reads a value that block 0's inner module leaves behind: skipping block 0
    would lose it, so the probe refuses prefix reuse and patching stays exact."""
    model, info = load_model(gpt2_dir, device="cpu")
    side: dict[str, torch.Tensor] = {}

    def leave(module, args, output):
        side["x"] = output[0].detach()[..., :1].mean()

    ramp = torch.linspace(-1.0, 1.0, info.d_model)  # not a constant: LayerNorm removes those

    def take(module, args, kwargs):
        x = side.pop("x", torch.tensor(0.0)) * ramp
        if args:
            return (args[0] + x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + x}

    inner = model.blocks[0].original_component
    handles = [
        inner.register_forward_hook(leave),
        model.blocks[1].register_forward_pre_hook(take, with_kwargs=True),
    ]
    try:
        assert not prefix_reuse(model)
        pairs = random_pairs()
        nodes = cg.enumerate_nodes(info, ["head", "mlp"])
        got = patch_nodes(model, pairs, nodes, batch_size=3).signed
        with full_forward():
            want = patch_nodes(model, pairs, nodes, batch_size=3).signed
        assert torch.equal(got, want)
    finally:
        for h in handles:
            h.remove()


def test_skipped_blocks_are_restored_after_an_error(tiny_gpt2) -> None:
    model, _ = tiny_gpt2
    pairs = random_pairs()

    def boom(act, hook):
        raise RuntimeError("boom")

    from circuitgraph.run import base_run, run_metric
    from circuitgraph.tasks.metrics import get_metric

    metric = get_metric("logit_diff")
    ctx = base_run(model, pairs, metric, "noising", [1])
    assert ctx.prefix is not None
    with pytest.raises(RuntimeError, match="boom"):
        run_metric(model, pairs.clean, pairs, metric, None, [(hooks.resid_pre(1), boom)],
                   ctx.prefix, 1)  # fmt: skip
    assert all("forward" not in b.__dict__ for b in model.blocks)
    assert "forward" not in model.unembed.__dict__
    values, _ = run_metric(model, pairs.clean, pairs, metric)
    assert torch.allclose(values, ctx.base_metric, atol=1e-6)


def test_circuit_runs_equal_the_full_forwards(zoo_model) -> None:
    """Circuits holding every edge into the lower layers start high (the logits only, for
    one): their runs replay from there, with the sources below read from the clean run."""
    from circuitgraph.patching import evaluate_circuits

    model, info = zoo_model
    edges = EdgeSet.full(info).edges()
    last = info.n_layers - 1
    circuits = [
        [e for e in edges if e.dst.kind != "logits" and e.dst.layer < last],  # starts at last
        [e for e in edges if e.dst.kind != "logits"],  # the logits' inputs only
        [e for e in edges if e.dst.kind != "logits" and e.dst.layer < last][::3],  # from 0
        [e for e in edges if e.src.kind == "input" or e.dst.kind == "logits"],
    ]
    pairs = _zoo_pairs(info, 4)
    got = evaluate_circuits(model, pairs, circuits, batch_size=2)
    with full_forward():
        want = evaluate_circuits(model, pairs, circuits, batch_size=2)
    g = torch.tensor([ev.metric_circuit for ev in got])
    w = torch.tensor([ev.metric_circuit for ev in want])
    gap = abs(want[0].metric_clean - want[0].metric_corrupt)
    assert float((g - w).abs().max()) <= TOL * max(gap, float(w.abs().max()))
