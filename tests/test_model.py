"""Loading models from local directories, the way a user's model is loaded."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.errors import ModelLoadError
from circuitgraph.model import load_model, require_eval


def test_gpt2_shaped_model_facts(tiny_gpt2):
    model, info = tiny_gpt2
    assert not model.training
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_model, info.d_head) == (
        2,
        4,
        4,
        32,
        8,
    )
    assert info.d_mlp == 64 and info.norm == "LN"
    assert not info.rotary and not info.grouped_query and not info.gated_mlp
    assert not info.parallel_blocks


def test_llama_shaped_model_facts(tiny_llama):
    _model, info = tiny_llama
    assert (info.n_heads, info.n_kv_heads, info.heads_per_kv) == (4, 2, 2)
    assert info.norm == "RMS" and info.rotary and info.grouped_query and info.gated_mlp


def test_bridge_matches_the_hf_model_it_wraps(tiny_llama, pairs):
    model, _ = tiny_llama
    with torch.no_grad():
        ours = model(pairs.clean)
        theirs = model.original_model(pairs.clean).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_dtype_is_taken_from_the_argument(gpt2_dir):
    model, _ = load_model(gpt2_dir, device="cpu", dtype="float64")
    assert next(iter(model.parameters())).dtype == torch.float64


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_directory_without_config_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(str(tmp_path))


def test_unknown_zoo_model_names_the_alternatives():
    with pytest.raises(ModelLoadError, match="zoo model"):
        load_model("zoo:no-such-model")


def test_unreachable_hub_names_the_alternatives(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"zoo model .* or a local model directory"):
        load_model("circuitgraph-test/definitely-not-cached")


def test_bad_dtype_is_refused(gpt2_dir):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(gpt2_dir, dtype="float7")


def test_require_eval_refuses_train_mode():
    from circuitgraph.errors import ModelStateError

    with pytest.raises(ModelStateError, match="eval mode"):
        require_eval(torch.nn.Linear(2, 2).train())


# ---- devices: the resolution logic, exercised here without a GPU --------------------------


class _FakeCuda:
    """torch.cuda as a machine with ``count`` GPUs would report it."""

    def __init__(self, count: int, current: int = 0) -> None:
        self.count, self.current = count, current

    def patch(self, monkeypatch) -> None:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)


def test_devices_resolve_the_same_way_everywhere(monkeypatch):
    import torch

    from circuitgraph.errors import ConfigError
    from circuitgraph.model import resolve_device

    _FakeCuda(2, current=1).patch(monkeypatch)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # the process's current GPU
    assert resolve_device(None) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == resolve_device(torch.device("cuda", 0))
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"GPU 2 but torch sees 2 \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    _FakeCuda(0).patch(monkeypatch)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="such as 'cpu', 'cuda'"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="Metal"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
