"""Models built for checking estimators against exact patching.

* ``linear_attn``: one-layer GPT-2 / Llama (GQA, rotary) whose MLP is zero and whose final
  norm scale is frozen to 1, so the metric is exactly linear in every head's output: the
  softmax is the only non-linearity left for q and k. ``saturated`` scales W_Q up until
  attention is one-hot (probabilities above 0.999).
* ``twin_gpt2``: two-layer GPT-2 where token j + TWIN has the embedding of token j plus
  EPS·u_j, so swapping tokens for their twins is a vanishing perturbation of every
  activation; its attention scale is divided by the layer index (scale_attn_by_inverse_layer_idx).
* native (TL-native) models without normalisation, weights set by hand.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from circuitgraph.model import load_model, model_info
from circuitgraph.tasks.pairs import PromptPairs
from circuitgraph.zoo.tokenizer import build_word_tokenizer

from ..conftest import D_VOCAB, VOCAB_WORDS, distinct

EPS = 1e-7
TWIN = 22  # tokens 4..25 have twins 26..47


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster when other processes share the
    cores (idle OpenMP workers spin); restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hf_model(arch: str, n_layer: int, **extra: object) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=D_VOCAB, n_positions=32, n_embd=32, n_layer=n_layer, n_head=4, n_inner=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=3,
            **extra,
        )  # fmt: skip
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        vocab_size=D_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layer,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        tie_word_embeddings=False, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def _save(model: torch.nn.Module, path: str) -> None:
    model.save_pretrained(path)
    build_word_tokenizer(VOCAB_WORDS, path)


def _load(path: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(path, device="cpu", dtype="float64")


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


def _linear_attn(arch: str, q_gain: float, path: str):
    torch.manual_seed(0)
    hf = _hf_model(arch, 1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "mlp" in name:
                p.zero_()
            elif p.dim() == 2:
                p.normal_(0.0, 0.3)
            if "q_proj" in name:
                p *= q_gain
            if "c_attn.weight" in name:
                p[:, :32] *= q_gain  # GPT-2's fused [q | k | v]
    _save(hf, path)
    model, info = _load(path)

    def unit_scale(scale: torch.Tensor, hook: object) -> torch.Tensor:
        return torch.ones_like(scale)

    # The final norm's divisor frozen at 1: the logits are affine in the residual stream.
    model.ln_final.hook_scale.add_hook(unit_scale, is_permanent=True)
    return model, info


@pytest.fixture(scope="session")
def linear_attn(arch: str, tmp_path_factory: pytest.TempPathFactory):
    """(model, info): metric exactly linear in every head's output; softmax not saturated."""
    return _linear_attn(arch, 1.0, str(tmp_path_factory.mktemp(f"lin-{arch}")))


@pytest.fixture(scope="session")
def saturated_attn(arch: str, tmp_path_factory: pytest.TempPathFactory):
    """As ``linear_attn`` with W_Q scaled up: attention probabilities above 0.999."""
    return _linear_attn(arch, 6.0, str(tmp_path_factory.mktemp(f"sat-{arch}")))


@pytest.fixture(scope="session")
def twin_gpt2(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(1)
    hf = _hf_model("gpt2", 2, scale_attn_by_inverse_layer_idx=True)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        wte = hf.transformer.wte.weight
        base = torch.arange(4, 4 + TWIN)
        wte[base + TWIN] = wte[base] + EPS * torch.randn(TWIN, wte.shape[1])
    path = str(tmp_path_factory.mktemp("twin-gpt2"))
    _save(hf, path)
    return _load(path)


def mixed_pairs(n: int = 6, t_max: int = 9, seed: int = 0, twins: bool = False) -> PromptPairs:
    """Pairs whose corrupt prompt differs at every position after BOS (lengths vary).

    With ``twins`` the corrupt tokens are the clean tokens' twins (a vanishing perturbation).
    """
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = [], []
    for i in range(n):
        t = t_max - i % 3
        c = [2, *torch.randint(4, 4 + TWIN, (t - 1,), generator=g).tolist()]
        x = [2] + (
            [tok + TWIN for tok in c[1:]]
            if twins
            else torch.randint(4, D_VOCAB, (t - 1,), generator=g).tolist()
        )
        clean.append(c)
        corrupt.append(x)
    ids = torch.randint(4, D_VOCAB, (2, n), generator=g).tolist()
    return PromptPairs.from_tokens(clean, corrupt, ids[0], distinct(*ids, 4, D_VOCAB))


# --------------------------------------------------------------------------------------
# TL-native models without normalisation, weights by hand
# --------------------------------------------------------------------------------------


def native(n_layers: int, d_model: int, n_heads: int, d_head: int, d_vocab: int, **cfg: object):
    from transformer_lens.model_bridge.sources.native import boot

    config = dict(
        n_layers=n_layers, d_model=d_model, n_ctx=16, d_head=d_head, n_heads=n_heads,
        d_vocab=d_vocab, normalization_type=None, seed=0, act_fn="relu", **cfg,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = boot(config, dtype=torch.float64)
    model.eval()
    return model, model_info(model)


def params(model) -> dict[str, torch.nn.Parameter]:
    """The native model's parameters by short name (``layers.0.mlp.fc_in.weight``)."""
    return {n.replace("_original_component.", ""): p for n, p in model.named_parameters()}


@pytest.fixture(scope="session")
def cancelling():
    """Two layers, no attention, d_model 3 (e0 input, e1 signal, e2 constant 1).

    MLP0 writes s·e1 with s = 1 on the clean token and 0 on the corrupt one; the logit
    difference reads e1. MLP1 computes relu(2·e1 − 1) and writes −½ of it on e1. At the
    clean point the gradient of L through MLP1 (−½·2) cancels the direct one (+1), so AtP
    gives m0 nothing; the truth is −½ (MLP1 switches off when m0 is patched).
    """
    model, info = native(2, 3, 1, 1, 4, d_mlp=1)
    p = params(model)
    with torch.no_grad():
        for t in p.values():
            t.zero_()
        p["tok_embed.weight"][1, 0] = 1.0  # clean token 1 → e0; corrupt token 0 → nothing
        p["pos.weight"][:, 2] = 1.0
        p["layers.0.mlp.fc_in.weight"][0, 0] = 1.0
        p["layers.0.mlp.fc_out.weight"][1, 0] = 1.0
        p["layers.1.mlp.fc_in.weight"][0, 1] = 2.0
        p["layers.1.mlp.fc_in.bias"][0] = -1.0
        p["layers.1.mlp.fc_out.weight"][1, 0] = -0.5
        p["head.weight"][2, 1] = 1.0  # answer token 2 reads e1; wrong token 3 reads nothing
    pairs = PromptPairs.from_tokens([[1, 1]], [[1, 0]], [2], [3])
    return model, info, pairs


@pytest.fixture(scope="session")
def additive():
    """One attention-only layer without norms: the logits are affine in every head's z, so
    effects of patched per-position heads add exactly."""
    model, info = native(1, 16, 8, 4, 12, attn_only=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in model.parameters():
            t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.7)
    gp = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 12, (8, 6), generator=gp)
    corrupt = torch.randint(0, 12, (8, 6), generator=gp)
    ids = torch.randint(0, 12, (2, 8), generator=gp).tolist()
    pairs = PromptPairs.from_tokens(clean.tolist(), corrupt.tolist(), ids[0], distinct(*ids, 0, 12))
    return model, info, pairs


# --------------------------------------------------------------------------------------
# A float64 reference for exact patching (the library's patching reads metrics in float32)
# --------------------------------------------------------------------------------------


def reference_effects(model, pairs: PromptPairs, nodes, mode: str = "noising") -> torch.Tensor:
    """E I(n) per node by plain hooked forwards, metric kept in the model's dtype."""
    from circuitgraph.arch import Arch
    from circuitgraph.tasks.metrics import answer_logits, get_metric

    hook_site = Arch.of(model).node_site

    metric = get_metric("logit_diff")
    base, src = (pairs.clean, pairs.corrupt) if mode == "noising" else (pairs.corrupt, pairs.clean)
    names = sorted({hook_site(n).name for n in nodes})
    acts: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(act, hook):
            acts[name] = act.clone()

        return hook

    with torch.no_grad():
        model.run_with_hooks(src, fwd_hooks=[(n, grab(n)) for n in names])
        base_metric = metric(answer_logits(model(base), pairs), pairs)
        out = []
        for node in nodes:
            site = hook_site(node)

            def patch(act, hook, site=site, node=node):
                act = act.clone()
                pos = slice(None) if node.position is None else node.position
                if site.index is None:
                    act[:, pos] = acts[site.name][:, pos]
                else:
                    act[:, pos, site.index] = acts[site.name][:, pos, site.index]
                return act

            logits = model.run_with_hooks(base, fwd_hooks=[(site.name, patch)])
            out.append((metric(answer_logits(logits, pairs), pairs) - base_metric).mean())
    return torch.stack(out)
