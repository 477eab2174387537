"""GGUF files: dequantised once into a cached Hugging Face directory, then loaded from it.

The GGUF is a tiny random Llama written here with the ``gguf`` package under llama.cpp's
tensor and metadata names (some tensors Q4_1 like SmolLM2's, some Q8_0); no network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitgraph import gguf as cg_gguf
from circuitgraph.errors import ModelLoadError
from circuitgraph.model import load_model
from circuitgraph.tasks.pairs import adds_bos

gguf = pytest.importorskip("gguf")


def write_tiny_llama(path: Path, add_bos: bool = False, seed: int = 0) -> Path:
    """A 2-layer Llama (d_model 32, 4 heads / 2 KV heads) with a byte-level BPE vocabulary."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<s>", *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    v, d, f, n_layers, h, kv = len(tokens), 32, 64, 2, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(32)
    w.add_embedding_length(d)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(f)
    w.add_head_count(h)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(d // h)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (v - 2))  # 3: control, 1: normal
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)
    w.add_add_bos_token(add_bos)

    def tensor(name: str, shape: tuple[int, ...], kind: Q = Q.Q8_0, scale: float = 0.3) -> None:
        x = rng.normal(0.0, scale, size=shape).astype(np.float32)
        if kind == Q.F32:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, quantize(x, kind), raw_dtype=kind)

    tensor("token_embd.weight", (v, d), Q.Q4_1)
    for i in range(n_layers):
        tensor(f"blk.{i}.attn_norm.weight", (d,), Q.F32, 1.0)
        tensor(f"blk.{i}.attn_q.weight", (d, d), Q.Q4_1)
        tensor(f"blk.{i}.attn_k.weight", (kv * d // h, d))
        tensor(f"blk.{i}.attn_v.weight", (kv * d // h, d))
        tensor(f"blk.{i}.attn_output.weight", (d, d))
        tensor(f"blk.{i}.ffn_norm.weight", (d,), Q.F32, 1.0)
        tensor(f"blk.{i}.ffn_gate.weight", (f, d))
        tensor(f"blk.{i}.ffn_up.weight", (f, d))
        tensor(f"blk.{i}.ffn_down.weight", (d, f))
    tensor("output_norm.weight", (d,), Q.F32, 1.0)
    tensor("output.weight", (v, d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q4_1.gguf")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CIRCUITGRAPH_CACHE", str(root))
    return root / "gguf"


def _dequantised(path: Path, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    """The model transformers dequantises straight from the GGUF (the reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype, attn_implementation="eager"
    ).eval()


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(seed))


def test_gguf_converts_once_into_the_cache_and_loads(tiny_gguf, cache, monkeypatch):
    model, info = load_model(str(tiny_gguf), device="cpu")
    assert not model.training
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_model) == (2, 4, 2, 32)
    assert info.name == "tiny-llama.Q4_1"
    entries = list(cache.iterdir())
    assert [e.name for e in entries] == [f"{cg_gguf.file_sha256(tiny_gguf)}-float32"]
    assert {"config.json", "model.safetensors", "tokenizer.json", cg_gguf.MARKER} <= {
        p.name for p in entries[0].iterdir()
    }
    assert "quantization_config" not in (entries[0] / "config.json").read_text()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load converted the GGUF again")

    monkeypatch.setattr(cg_gguf, "convert", no_conversion)
    again, _ = load_model(str(tiny_gguf), device="cpu")
    with torch.no_grad():
        assert torch.equal(model(_tokens()), again(_tokens()))
    assert len(list(cache.iterdir())) == 1


def test_cached_model_equals_the_dequantised_one_exactly(tiny_gguf, cache):
    from transformers import AutoModelForCausalLM

    reference = _dequantised(tiny_gguf)
    folder = cg_gguf.cached_model_dir(tiny_gguf)
    cached = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ref_state, cached_state = reference.state_dict(), cached.state_dict()
    assert ref_state.keys() == cached_state.keys()
    for name, tensor in ref_state.items():
        assert torch.equal(tensor, cached_state[name]), name
    with torch.no_grad():
        assert torch.equal(reference(_tokens()).logits, cached(_tokens()).logits)
    # and the bridge loaded from the cache runs those weights
    bridge, _ = load_model(str(tiny_gguf), device="cpu")
    with torch.no_grad():
        assert torch.allclose(bridge(_tokens()), reference(_tokens()).logits, atol=1e-5)


def test_each_dtype_is_its_own_cache_entry(tiny_gguf, cache):
    model, _ = load_model(str(tiny_gguf), device="cpu", dtype="bfloat16")
    assert next(iter(model.parameters())).dtype == torch.bfloat16
    assert [e.name.rsplit("-", 1)[1] for e in cache.iterdir()] == ["bfloat16"]
    reference = _dequantised(tiny_gguf, torch.bfloat16).state_dict()
    for name, tensor in model.original_model.state_dict().items():
        if name in reference:
            assert torch.equal(tensor, reference[name]), name


def test_an_interrupted_conversion_leaves_no_cache(tiny_gguf, cache, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cg_gguf, "_provenance", interrupted)  # after the weights are written
        with pytest.raises(KeyboardInterrupt):
            load_model(str(tiny_gguf), device="cpu")
    assert list(cache.iterdir()) == []
    load_model(str(tiny_gguf), device="cpu")  # the next load converts afresh
    assert len(list(cache.iterdir())) == 1


def test_a_killed_conversion_s_leftovers_are_removed_once_stale(tiny_gguf, cache):
    import os

    cache.mkdir(parents=True)
    stale, fresh = cache / ".abc-float32.killed", cache / ".abc-float32.running"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    os.utime(stale, (0, 0))
    load_model(str(tiny_gguf), device="cpu")
    assert not stale.exists() and fresh.exists()


def test_a_folder_holding_one_gguf_loads_it(tiny_gguf, cache, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / tiny_gguf.name).write_bytes(tiny_gguf.read_bytes())
    _, info = load_model(str(folder), device="cpu")
    assert info.n_layers == 2 and info.name == "model"
    (folder / "other.gguf").write_bytes(tiny_gguf.read_bytes())
    with pytest.raises(ModelLoadError, match=r"expected one \.gguf file .* holds 2"):
        load_model(str(folder), device="cpu")


@pytest.mark.parametrize("add_bos", [False, True])
def test_the_tokenizer_keeps_its_bos_convention_through_the_cache(tmp_path, cache, add_bos):
    path = write_tiny_llama(tmp_path / f"bos-{add_bos}.gguf", add_bos=add_bos)
    model, _ = load_model(str(path), device="cpu")
    assert adds_bos(model.tokenizer) is add_bos
    assert model.cfg.default_prepend_bos is add_bos


def test_a_broken_gguf_is_one_clear_error(tmp_path, cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match=r"could not read the GGUF file .*broken\.gguf") as err:
        load_model(str(bad), device="cpu")
    assert "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


def test_a_missing_gguf_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"GGUF file .* does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match=r"GGUF file .* does not exist"):
        load_model("nope.gguf")


def test_an_unwritable_cache_names_the_variable(tiny_gguf, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CIRCUITGRAPH_CACHE", str(blocker))
    with pytest.raises(ModelLoadError, match="CIRCUITGRAPH_CACHE"):
        load_model(str(tiny_gguf), device="cpu")


def test_cache_root_defaults_to_the_home_cache(monkeypatch):
    monkeypatch.delenv("CIRCUITGRAPH_CACHE", raising=False)
    assert cg_gguf.cache_root() == Path.home() / ".cache" / "circuitgraph"
    monkeypatch.setenv("CIRCUITGRAPH_CACHE", "~/elsewhere")
    assert cg_gguf.cache_root() == Path.home() / "elsewhere"
