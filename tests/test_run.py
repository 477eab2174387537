"""The run layer: options, resolution, hooks that are always undone, captures, references."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.arch import hooks
from circuitgraph.errors import ConfigError, ModelStateError
from circuitgraph.run import (
    RunOptions,
    attached,
    base_run,
    capture,
    clean_reference,
    model_device,
    resolve,
    rows_per_pass,
)
from circuitgraph.tasks.metrics import get_metric

from .conftest import random_pairs


def test_options_refuse_nonsense() -> None:
    with pytest.raises(ConfigError, match="mode"):
        RunOptions(mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch size"):
        RunOptions(batch_size=0)
    seen: list[int] = []
    RunOptions(progress=seen.append).advance(3)
    RunOptions().advance(3)  # no callback: nothing happens
    assert seen == [3]


def test_resolve_moves_pairs_and_resolves_the_metric(tiny_gpt2) -> None:
    model, _ = tiny_gpt2
    pairs, metric, opts = resolve(model, random_pairs(3), "kl", batch_size=2)
    assert pairs.device == model_device(model) and metric.name == "kl" and opts.batch_size == 2
    with pytest.raises(ConfigError, match="at least one prompt pair"):
        resolve(model, random_pairs(3).select(slice(0, 0)), "kl")
    model.train()
    try:
        with pytest.raises(ModelStateError, match="eval mode"):
            resolve(model, random_pairs(3), "kl")
    finally:
        model.eval()


def test_capture_keeps_the_names_asked_for_and_leaves_no_hook(tiny_gpt2) -> None:
    model, _ = tiny_gpt2
    pairs = random_pairs(2)
    acts = capture(model, pairs.clean, [hooks.z(0), hooks.embed])
    assert set(acts) == {hooks.z(0), hooks.embed}
    assert acts[hooks.z(0)].shape[:2] == pairs.clean.shape
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_hooks_are_removed_on_error(tiny_gpt2) -> None:
    model, _ = tiny_gpt2

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), attached(model, fwd=[(hooks.embed, boom)]):
        model(random_pairs(1).clean)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def _grads_by(model, tokens, bwd, through_bridge: bool) -> dict[str, torch.Tensor]:
    """Gradients at the hooks of ``bwd`` (and of the embedding) of the summed logits, with
    the backward hooks attached by ``attached`` or by the bridge's own backward hooks."""
    leaf: list[torch.Tensor] = []

    def make_leaf(act, hook):
        leaf.append(act.detach().requires_grad_(True))
        return leaf[0]

    got: dict[str, torch.Tensor] = {}

    def store(name):
        def hook(grad, hook):
            got[name] = grad.clone()

        return hook

    # attn_out(0) is also where the cut below sits: a hook there sees the gradient as it
    # arrives, whatever another hook at the same point returns
    seen = (hooks.z(0), hooks.z(1), hooks.resid_pre(1), hooks.attn_out(0))
    hooked = bwd + [(n, store(n)) for n in seen]  # the cut first: it must not blind the rest
    if through_bridge:
        context = model.hooks(fwd_hooks=[(hooks.embed, make_leaf)], bwd_hooks=hooked)
    else:
        context = attached(model, fwd=[(hooks.embed, make_leaf)], bwd=hooked)
    with torch.enable_grad(), context:
        model(tokens)[:, -1].sum().backward()
    return {**got, "embed": leaf[0].grad}


def test_backward_hooks_see_and_replace_what_the_bridges_own_do(tiny_gpt2) -> None:
    # attached() reads gradients with tensor hooks on each hook point's output (cheaper than
    # the bridge's module backward hooks); the gradients seen, and the effect of a hook that
    # replaces one (GradDrop's cut), must be the bridge's own
    model, _ = tiny_gpt2
    tokens = random_pairs(2).clean
    cut = [(hooks.attn_out(0), lambda grad, hook: torch.zeros_like(grad))]
    seen = {}
    for name, bwd in (("plain", []), ("cut", cut)):
        seen[name] = ours = _grads_by(model, tokens, bwd, through_bridge=False)
        theirs = _grads_by(model, tokens, bwd, through_bridge=True)
        assert set(ours) == set(theirs)
        for hook_name, grad in theirs.items():
            assert torch.allclose(ours[hook_name], grad, atol=1e-6), (name, hook_name)
    # the cut changes what flows below it (else the comparison above proves little)
    assert not torch.allclose(seen["cut"]["embed"], seen["plain"]["embed"])
    with torch.no_grad(), attached(model, bwd=[(hooks.z(0), lambda g, h: 1 / 0)]):
        model(tokens)  # no gradient in the run: the hook is never attached, nothing fails
    assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_attaching_refuses_what_the_bridge_refuses_and_leaves_nothing_behind(tiny_gpt2) -> None:
    # attached() resolves names through the bridge once per model and attaches directly:
    # an unknown name must still fail (undoing what was attached before it), and a hook
    # point the model's config gates off must be refused on every attachment
    model, _ = tiny_gpt2

    def noop(act, hook):
        return None

    unknown = [(hooks.embed, noop), ("blocks.0.hook_nonsense", noop)]
    with pytest.raises(KeyError, match="does not exist"), attached(model, fwd=unknown):
        pass
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    gated = "blocks.0.attn.hook_result"
    try:
        model.set_use_attn_result(True)
        with attached(model, fwd=[(gated, noop)]):
            assert model.hook_dict[gated].fwd_hooks
        model.set_use_attn_result(False)
        with (
            pytest.raises(ValueError, match="use_attn_result"),
            attached(model, fwd=[(gated, noop)]),
        ):
            pass
    finally:
        model.set_use_attn_result(False)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_the_reference_is_always_the_clean_distribution(tiny_gpt2) -> None:
    model, _ = tiny_gpt2
    pairs = random_pairs(3)
    kl = get_metric("kl")
    ref = clean_reference(model, pairs, kl)
    assert clean_reference(model, pairs, get_metric("logit_diff")) is None
    for mode in ("noising", "denoising"):
        ctx = base_run(model, pairs, kl, mode)
        assert ctx.reference is not None and torch.allclose(ctx.reference, ref)
    # noising: the base run is clean, so its KL to the reference is zero
    assert base_run(model, pairs, kl, "noising").base_metric.abs().max() < 1e-5


def test_rows_per_pass_respects_the_cap(tiny_gpt2) -> None:
    model, _ = tiny_gpt2
    assert rows_per_pass(model, random_pairs(2), max_rows=7) == 7
    assert 1 <= rows_per_pass(model, random_pairs(2)) <= 1024
