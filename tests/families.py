"""Tiny random models of every decoder family, built offline from a config.

Each builder returns a seeded float32 ``transformers`` model with two layers, width 64 and
four query heads (fewer KV heads where the family has grouped- or multi-query attention).
Random init leaves biases at zero and norm weights at one, which would let a bug hide
behind an identity; :func:`randomise` draws every parameter afresh (matrices N(0, 0.2²),
biases N(0, 0.1²), vectors that scale 1 + N(0, 0.2²)). Sliding windows, soft-caps and
attention scalars are set so that they actually bite on short prompts.

``save_family(name, path)`` writes the model with ``save_pretrained`` plus the zoo's
word-level tokenizer (48 ids, offline), so ``circuitgraph.model.load_model(path)`` loads
it exactly like a user's model directory.

Example:
    >>> from tests.families import FAMILIES, build
    >>> model = build("gpt_neox")  # doctest: +SKIP
    >>> sorted(FAMILIES)[:3]
    ['bloom', 'falcon', 'falcon_alibi']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitgraph.zoo.tokenizer import build_word_tokenizer

__all__ = [
    "D_VOCAB", "FAMILIES", "TWIN_OFFSET", "VOCAB_WORDS", "Family", "build", "randomise",
    "save_family", "task_words",
]  # fmt: skip

VOCAB_WORDS = [f"w{i}" for i in range(44)]  # + 4 special tokens = 48 ids
D_VOCAB = len(VOCAB_WORDS) + 4
WIDTH, LAYERS, HEADS, D_HEAD, D_MLP, N_CTX = 64, 2, 4, 16, 128, 32
_IDS = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}


@dataclass(frozen=True)
class Family:
    """One family variant: how to build it and what it is meant to exercise."""

    name: str
    make: Callable[[int, int], Any]  # (layers, vocab size) → a fresh model (random init)
    exercises: str


def _eager(cls: Any, cfg: Any) -> Any:
    """The model with eager attention, as TransformerLens loads it (HF's sdpa and eager
    paths can differ: Falcon with ALiBi scales the bias in one and not the other)."""
    cfg._attn_implementation = "eager"
    return cls(cfg)


def _rope(partial: float = 1.0) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial}


def _gpt2(layers: int, vocab: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return _eager(GPT2LMHeadModel, GPT2Config(
        vocab_size=vocab, n_positions=N_CTX, n_embd=WIDTH, n_layer=layers, n_head=HEADS,
        n_inner=D_MLP, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_IDS,
    ))  # fmt: skip


def _neox(parallel: bool, partial: float) -> Callable[[int, int], Any]:
    def make(layers: int, vocab: int) -> Any:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        return _eager(GPTNeoXForCausalLM, GPTNeoXConfig(
            vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=layers,
            num_attention_heads=HEADS, intermediate_size=D_MLP, max_position_embeddings=N_CTX,
            use_parallel_residual=parallel, rope_parameters=_rope(partial), attention_bias=True,
            tie_word_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0, **_IDS,
        ))  # fmt: skip

    return make


def _gptj(layers: int, vocab: int) -> Any:
    from transformers import GPTJConfig, GPTJForCausalLM

    return _eager(GPTJForCausalLM, GPTJConfig(
        vocab_size=vocab, n_positions=N_CTX, n_embd=WIDTH, n_layer=layers, n_head=HEADS,
        rotary_dim=8, n_inner=D_MLP, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=False, **_IDS,
    ))  # fmt: skip


def _phi(layers: int, vocab: int) -> Any:
    from transformers import PhiConfig, PhiForCausalLM

    return _eager(PhiForCausalLM, PhiConfig(
        vocab_size=vocab, hidden_size=WIDTH, intermediate_size=D_MLP, num_hidden_layers=layers,
        num_attention_heads=HEADS, max_position_embeddings=N_CTX, rope_parameters=_rope(0.5),
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, **_IDS,
    ))  # fmt: skip


def _phi3(layers: int, vocab: int) -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    return _eager(Phi3ForCausalLM, Phi3Config(
        vocab_size=vocab, hidden_size=WIDTH, intermediate_size=D_MLP, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=N_CTX,
        original_max_position_embeddings=N_CTX, resid_pdrop=0.0, embd_pdrop=0.0,
        attention_dropout=0.0, tie_word_embeddings=False, **_IDS,
    ))  # fmt: skip


def _llama_like(config: str, model: str, **extra: Any) -> Callable[[int, int], Any]:
    """Llama, Mistral, Mixtral, Qwen2/3, Gemma 1/2/3, OLMo 1/2, StableLM: one shape of config."""

    def make(layers: int, vocab: int) -> Any:
        import transformers

        cfg = getattr(transformers, config)(
            vocab_size=vocab, hidden_size=WIDTH, intermediate_size=D_MLP,
            num_hidden_layers=layers, num_attention_heads=HEADS, max_position_embeddings=N_CTX,
            attention_dropout=0.0, **_IDS, **extra,
        )  # fmt: skip
        return _eager(getattr(transformers, model), cfg)

    return make


def _opt(layers: int, vocab: int) -> Any:
    from transformers import OPTConfig, OPTForCausalLM

    return _eager(OPTForCausalLM, OPTConfig(
        vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=layers, ffn_dim=D_MLP,
        num_attention_heads=HEADS, max_position_embeddings=N_CTX, word_embed_proj_dim=WIDTH,
        do_layer_norm_before=True, enable_bias=True, dropout=0.0, attention_dropout=0.0,
        layerdrop=0.0, **_IDS,
    ))  # fmt: skip


def _bloom(layers: int, vocab: int) -> Any:
    from transformers import BloomConfig, BloomForCausalLM

    return _eager(BloomForCausalLM, BloomConfig(
        vocab_size=vocab, hidden_size=WIDTH, n_layer=layers, n_head=HEADS,
        hidden_dropout=0.0, attention_dropout=0.0, **_IDS,
    ))  # fmt: skip


def _falcon(**variant: Any) -> Callable[[int, int], Any]:
    def make(layers: int, vocab: int) -> Any:
        from transformers import FalconConfig, FalconForCausalLM

        return _eager(FalconForCausalLM, FalconConfig(
            vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=layers,
            num_attention_heads=HEADS, max_position_embeddings=N_CTX, ffn_hidden_size=D_MLP,
            bias=True, hidden_dropout=0.0, attention_dropout=0.0, **_IDS, **variant,
        ))  # fmt: skip

    return make


def _bigcode(layers: int, vocab: int) -> Any:
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    return _eager(GPTBigCodeForCausalLM, GPTBigCodeConfig(
        vocab_size=vocab, n_positions=N_CTX, n_embd=WIDTH, n_layer=layers, n_head=HEADS,
        n_inner=D_MLP, multi_query=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        **_IDS,
    ))  # fmt: skip


_SOFTCAP = {"attn_logit_softcapping": 8.0, "final_logit_softcapping": 5.0}
# Gemma scales queries by query_pre_attn_scalar^-½, not head_dim^-½: make them differ.
_GEMMA = {"head_dim": D_HEAD, "query_pre_attn_scalar": 24, "hidden_activation": "gelu_pytorch_tanh"}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("gpt2", _gpt2, "LayerNorm, learned positions, fused Conv1D qkv, biases"),
        Family(
            "gpt_neox", _neox(True, 0.25),
            "parallel attention + MLP (two norms), partial NeoX rotary (¼), per-head fused qkv",
        ),
        Family(
            "gpt_neox_seq", _neox(False, 1.0), "sequential blocks, full NeoX rotary, per-head fused qkv"
        ),
        Family(
            "gptj", _gptj,
            "parallel attention + MLP (one shared norm), partial GPT-J (interleaved) rotary",
        ),
        Family("phi", _phi, "parallel attention + MLP (one shared norm), partial rotary (½), biases"),
        Family("phi3", _phi3, "RMSNorm, fused qkv_proj with GQA, fused gate_up_proj"),
        Family("llama", _llama_like("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=2,
                                    tie_word_embeddings=False), "RMSNorm, rotary, GQA, gated MLP"),
        Family("mistral", _llama_like("MistralConfig", "MistralForCausalLM", num_key_value_heads=2,
                                      sliding_window=4, tie_word_embeddings=False),
               "GQA, sliding-window attention (window 4)"),
        Family("mixtral", _llama_like("MixtralConfig", "MixtralForCausalLM", num_key_value_heads=2,
                                      num_local_experts=4, num_experts_per_tok=2,
                                      tie_word_embeddings=False),
               "mixture of experts (4 experts, top 2): no single neuron basis"),
        Family("qwen2", _llama_like("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=2,
                                    tie_word_embeddings=False), "GQA, q/k/v biases"),
        Family("qwen3", _llama_like("Qwen3Config", "Qwen3ForCausalLM", num_key_value_heads=2,
                                    head_dim=D_HEAD, tie_word_embeddings=False),
               "GQA, per-head QK-norm"),
        Family("gemma", _llama_like("GemmaConfig", "GemmaForCausalLM", num_key_value_heads=1,
                                    head_dim=D_HEAD, hidden_act="gelu_pytorch_tanh"),
               "multi-query attention, (1 + w) RMSNorm, √d embedding scale, tied unembedding"),
        Family("gemma2", _llama_like("Gemma2Config", "Gemma2ForCausalLM", num_key_value_heads=2,
                                     sliding_window=4, **_GEMMA, **_SOFTCAP),
               "post-attention and post-MLP norms, attention and final soft-capping, "
               "query_pre_attn_scalar, alternating sliding window"),
        Family("gemma3", _llama_like("Gemma3TextConfig", "Gemma3ForCausalLM",
                                     num_key_value_heads=2, sliding_window=4, **_GEMMA),
               "post-norms, per-head QK-norm, query_pre_attn_scalar, sliding window"),
        Family("olmo", _llama_like("OlmoConfig", "OlmoForCausalLM", clip_qkv=2.0,
                                   tie_word_embeddings=False),
               "LayerNorm without parameters, q/k/v clipping"),
        Family("olmo2", _llama_like("Olmo2Config", "Olmo2ForCausalLM", tie_word_embeddings=False),
               "post-norms only (no pre-norms), QK-norm over all heads jointly"),
        Family("opt", _opt, "LayerNorm, learned positions (offset 2), separate fc1/fc2, biases"),
        Family("bloom", _bloom, "ALiBi, embedding LayerNorm, per-head fused qkv"),
        Family("falcon", _falcon(), "multi-query, parallel attention + MLP with one shared norm"),
        Family(
            "falcon_gqa", _falcon(new_decoder_architecture=True, num_kv_heads=2),
            "new decoder architecture: GQA, grouped fused qkv, two parallel norms",
        ),
        Family(
            "falcon_alibi", _falcon(alibi=True, multi_query=False, parallel_attn=False),
            "sequential blocks with ALiBi (falcon-rw)",
        ),
        Family("stablelm", _llama_like("StableLmConfig", "StableLmForCausalLM",
                                       num_key_value_heads=HEADS, rope_parameters=_rope(0.25),
                                       use_qkv_bias=True, tie_word_embeddings=False),
               "LayerNorm, partial rotary (¼), q/k/v biases"),
        Family("stablelm_par", _llama_like("StableLmConfig", "StableLmForCausalLM",
                                           num_key_value_heads=2, rope_parameters=_rope(0.25),
                                           qk_layernorm=True, use_parallel_residual=True,
                                           tie_word_embeddings=False),
               "parallel residual with one shared norm, per-head QK LayerNorm, GQA"),
        Family("gpt_bigcode", _bigcode, "multi-query attention, fused c_attn"),
    ]
}  # fmt: skip


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter so that no bias is zero and no norm is the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.dim() >= 2:
                p.copy_(0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # norm scales (also Gemma's (1 + w) ones: any value away from 0 and 1 will do)
                p.copy_(1.0 + 0.2 * noise)
    return model


#: with ``twin`` > 0, word j + TWIN_OFFSET embeds as word j plus twin·u_j (|u_j| ~ 1 per entry)
TWIN_OFFSET = len(VOCAB_WORDS) // 2


def build(
    name: str, seed: int = 0, layers: int = LAYERS, twin: float = 0.0, vocab: int = D_VOCAB
) -> Any:
    """A fresh float32 model of the family, randomised with ``seed``, in eval mode.

    ``twin`` > 0 makes every word 4 + j + TWIN_OFFSET (j < TWIN_OFFSET) a near-copy of word
    4 + j: swapping words for their twins is then a vanishing perturbation of every
    activation, where attribution patching must equal exact patching to first order.
    """
    torch.manual_seed(seed)
    model = FAMILIES[name].make(layers, vocab).to(torch.float32)
    randomise(model, seed)
    if twin:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            first = slice(4, 4 + TWIN_OFFSET)
            noise = torch.randn(emb[first].shape, generator=gen)
            emb[4 + TWIN_OFFSET : 4 + 2 * TWIN_OFFSET] = emb[first] + twin * noise
    return model.eval()


def save_family(
    name: str,
    path: str | Path,
    seed: int = 0,
    layers: int = LAYERS,
    twin: float = 0.0,
    words: Sequence[str] = VOCAB_WORDS,
) -> str:
    """Write the family's model and a word-level tokenizer of ``words`` to ``path``.

    The default 44 words keep the embedding tiny; pass :func:`task_words` for a model that
    the built-in tasks (and so ``circuitgraph discover``) can run on.
    """
    model = build(name, seed, layers, twin, vocab=len(words) + 4)
    model.save_pretrained(str(path))
    build_word_tokenizer(words, path)
    return str(path)


def task_words() -> tuple[str, ...]:
    """The zoo's vocabulary: every word the built-in tasks use (about 330)."""
    from circuitgraph.zoo.corpus import vocabulary

    return vocabulary()
