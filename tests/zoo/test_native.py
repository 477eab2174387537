"""The attention-only model is TL-native: it must load like the HF models do."""

from __future__ import annotations

import json

import pytest
import torch

from circuitgraph.errors import ModelLoadError
from circuitgraph.model import load_model
from circuitgraph.tasks import make_pairs
from circuitgraph.zoo import model_path
from circuitgraph.zoo.native import NATIVE_CONFIG, WEIGHTS


def test_cfg_and_info(attn_only):
    model, info = attn_only
    cfg = model.cfg
    assert cfg.attn_only is True and info.attn_only and info.d_mlp == 0
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model) == (2, 2, 32, 64)
    assert (cfg.n_ctx, cfg.d_vocab) == (48, len(model.tokenizer))
    assert not model.training


def test_hook_names_and_shapes(attn_only):
    model, info = attn_only
    pairs = make_pairs("induction", model.tokenizer, 3, seed=0)
    _, cache = model.run_with_cache(pairs.clean)
    b, t = pairs.clean.shape
    for layer in range(info.n_layers):
        for kind in ("z", "q", "k", "v"):
            assert cache[f"blocks.{layer}.attn.hook_{kind}"].shape == (
                b,
                t,
                info.n_heads,
                info.d_head,
            )
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (b, info.n_heads, t, t)
        assert cache[f"blocks.{layer}.hook_attn_out"].shape == (b, t, info.d_model)
    assert not any("mlp_out" in name for name in cache)


def test_bridge_computes_the_saved_weights(attn_only):
    """The bridge's logits equal those of a bare native module holding the file's weights."""
    from safetensors.torch import load_file
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import NativeModel

    model, _ = attn_only
    path = model_path("attn-only-2l")
    bare = NativeModel(
        TransformerBridgeConfig.from_dict(json.loads((path / NATIVE_CONFIG).read_text()))
    )
    bare.load_state_dict(load_file(str(path / WEIGHTS)))
    tokens = make_pairs("induction", model.tokenizer, 4, seed=1).clean
    with torch.no_grad():
        # the bridge computes the same sums in another order: float32 rounding, which depends
        # on the CPU's kernels (1.2e-5 on an Intel Xeon, under 1e-5 on an AMD EPYC)
        torch.testing.assert_close(model(tokens), bare.eval()(tokens), rtol=1e-4, atol=1e-4)


def test_mismatched_weights_are_refused(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path / "broken"
    shutil.copytree(model_path("attn-only-2l"), path)
    state = load_file(str(path / WEIGHTS))
    state["not.a.weight"] = torch.zeros(1)
    save_file(state, str(path / WEIGHTS))
    with pytest.raises(ModelLoadError, match=r"not\.a\.weight"):
        load_model(str(path), device="cpu")
