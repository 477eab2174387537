"""Train a zoo model on the synthetic corpus and write it as a loadable model directory.

Usage::

    python -m circuitgraph.train --model attn-only-2l [--seed 0] [--out DIR] [--threads 2]

The output directory holds the weights, the tokenizer, ``zoo.json`` (architecture, tasks,
training facts, per-task metrics) and a short model card ``README.md``. The per-task figures
are measured after saving, by loading the directory through :func:`circuitgraph.model.load_model`
exactly as a user would. Training is deterministic for a seed and a thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitgraph.errors import ConfigError
from circuitgraph.zoo import corpus
from circuitgraph.zoo.evaluate import EVAL_N, EVAL_SEED, evaluate
from circuitgraph.zoo.tokenizer import SPECIAL_TOKENS, build_word_tokenizer

__all__ = ["ARCHITECTURES", "SPECS", "ModelSpec", "main", "train"]

N_CTX = 48
PAD, BOS = SPECIAL_TOKENS.index("<pad>"), SPECIAL_TOKENS.index("<bos>")
EOS = SPECIAL_TOKENS.index("<eos>")
_ROOT = Path(__file__).parent / "zoo" / "models"


@dataclass(frozen=True)
class ModelSpec:
    """What to build and how to train it."""

    name: str
    architecture: str  # a key of ARCHITECTURES
    mix: str  # a key of corpus.MIXES
    tasks: tuple[str, ...]
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    steps: int
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0


# Two heads a layer keep attn-only-2l's induction circuit in one previous-token head and one
# induction head (with four, the work splits across redundant heads). Seed 3 was chosen among
# seeds 0-3 as the one whose circuit patching separates most clearly.
SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "attn-only-2l", "attn-only", "induction", ("induction",),
            n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_mlp=0, steps=1500, seed=3,
        ),
        ModelSpec(
            "gpt2-4l", "gpt2", "all", ("ioi", "induction", "greater-than"),
            n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_mlp=512, steps=3000,
        ),
        ModelSpec(
            "llama-gqa-4l", "llama", "all", ("ioi", "induction", "greater-than"),
            n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, d_mlp=256, steps=2500,
        ),
    )
}  # fmt: skip


# --- architectures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """How to build a fresh model of a spec, run it on token ids, and save it."""

    label: str
    description: str
    build: Callable[[ModelSpec, int], torch.nn.Module]
    logits: Callable[[torch.nn.Module, Tensor], Tensor]
    save: Callable[[torch.nn.Module, ModelSpec, int, Path], None]


def _build_gpt2(spec: ModelSpec, d_vocab: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    # HF's default init (std 0.02) left this small GPT-2 without clean induction heads (94%
    # on induction after 4000 steps); TransformerLens's 0.8 / sqrt(d_model) forms them early.
    cfg = GPT2Config(
        initializer_range=0.8 / math.sqrt(spec.d_model),
        vocab_size=d_vocab, n_positions=N_CTX, n_embd=spec.d_model, n_layer=spec.n_layers,
        n_head=spec.n_heads, n_inner=spec.d_mlp, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg)


def _build_llama(spec: ModelSpec, d_vocab: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=d_vocab, hidden_size=spec.d_model, intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads, max_position_embeddings=N_CTX,
        tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def _native_config(spec: ModelSpec, d_vocab: int) -> dict[str, Any]:
    return {
        "n_layers": spec.n_layers, "d_model": spec.d_model, "n_heads": spec.n_heads,
        "d_head": spec.d_model // spec.n_heads, "n_ctx": N_CTX, "d_vocab": d_vocab,
        "attn_only": True, "normalization_type": "LN", "positional_embedding_type": "standard",
        "d_mlp": 4 * spec.d_model, "model_name": spec.name,
    }  # fmt: skip


def _build_native(spec: ModelSpec, d_vocab: int) -> torch.nn.Module:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import (
        NativeModel,
        initialize_native_model,
    )

    cfg = TransformerBridgeConfig.from_dict(_native_config(spec, d_vocab))
    model = NativeModel(cfg)
    initialize_native_model(model, cfg)
    return model


def _hf_logits(model: torch.nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids).logits


def _native_logits(model: torch.nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids)


def _save_hf(model: torch.nn.Module, spec: ModelSpec, d_vocab: int, path: Path) -> None:
    model.save_pretrained(str(path))  # type: ignore[operator]


def _save_native(model: torch.nn.Module, spec: ModelSpec, d_vocab: int, path: Path) -> None:
    from circuitgraph.zoo.native import save_native_dir

    save_native_dir(model, _native_config(spec, d_vocab), path)


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture(
        "gpt2",
        "Hugging Face GPT-2 (LayerNorm, learned positions, GELU MLP, tied embeddings)",
        _build_gpt2,
        _hf_logits,
        _save_hf,
    ),
    "llama": Architecture(
        "llama",
        "Hugging Face Llama (RMSNorm, rotary positions, grouped-query attention, gated SiLU MLP)",
        _build_llama,
        _hf_logits,
        _save_hf,
    ),
    "attn-only": Architecture(
        "attn-only",
        "TransformerLens-native attention-only transformer (LayerNorm, learned positions, no "
        "MLPs; Hugging Face has no such architecture), booted with TransformerBridge.boot_native",
        _build_native,
        _native_logits,
        _save_native,
    ),
}


# --- training ---------------------------------------------------------------------------


def encode_documents(
    tokenizer: Any, docs: Sequence[str], chunks: int = 1
) -> list[Int[Tensor, "b t"]]:
    """BOS + each document, sorted by length into ``chunks`` right-padded micro-batches.

    Documents differ a lot in length (an induction sequence is twice an IOI sentence), so
    padding each micro-batch to its own longest row saves much of the compute.
    """
    rows = sorted(
        ([BOS, *tokenizer.encode(d, add_special_tokens=False)][:N_CTX] for d in docs), key=len
    )
    size = math.ceil(len(rows) / chunks)
    return [_pad(rows[i : i + size]) for i in range(0, len(rows), size)]


def _pad(rows: Sequence[Sequence[int]]) -> Int[Tensor, "b t"]:
    ids = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def lm_loss_sum(logits: Float[Tensor, "b t v"], ids: Int[Tensor, "b t"]) -> Tensor:
    """Summed next-token cross-entropy over the real (non-padding) targets."""
    targets = ids[:, 1:].masked_fill(ids[:, 1:] == PAD, -100)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def _n_targets(ids: Int[Tensor, "b t"]) -> int:
    return int((ids[:, 1:] != PAD).sum())


def _lr_factor(step: int, spec: ModelSpec) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _step(
    model: torch.nn.Module, arch: Architecture, chunks: Sequence[Tensor], opt: torch.optim.Optimizer
) -> float:
    """One optimiser step on the micro-batches; returns the mean loss per target token."""
    total = sum(_n_targets(ids) for ids in chunks)
    opt.zero_grad(set_to_none=True)
    loss_value = 0.0
    for ids in chunks:
        loss = lm_loss_sum(arch.logits(model, ids), ids) / total
        loss.backward()
        loss_value += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss_value


def train(
    spec: ModelSpec, tokenizer: Any, log: Callable[[str], None] = print
) -> tuple[torch.nn.Module, float]:
    """Train a fresh model of ``spec`` from its seed; return it and the final loss.

    The final loss is the mean training loss over the last 100 steps.

    Example:
        >>> model, loss = train(SPECS["attn-only-2l"], tokenizer)  # doctest: +SKIP
    """
    arch = ARCHITECTURES[spec.architecture]
    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    model = arch.build(spec, len(tokenizer))
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spec))
    mix = corpus.MIXES[spec.mix]
    recent: list[float] = []
    for step in range(spec.steps):
        docs = corpus.sample_documents(rng, mix, spec.batch_size)
        recent = [*recent[-99:], _step(model, arch, encode_documents(tokenizer, docs, 2), opt)]
        sched.step()
        if (step + 1) % 100 == 0:
            log(f"{spec.name} step {step + 1}/{spec.steps} loss {sum(recent) / len(recent):.4f}")
    model.eval()
    return model, sum(recent) / len(recent)


# --- writing the directory --------------------------------------------------------------


def measure(path: Path, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-task accuracy and mean logit diff of the saved model, loaded as a user would."""
    from circuitgraph.model import load_model

    model, _ = load_model(str(path), device="cpu")
    out = {}
    for task in tasks:
        accuracy, mean_diff = evaluate(model, model.tokenizer, task, EVAL_N, EVAL_SEED)
        out[task] = {"accuracy": round(accuracy, 4), "mean_logit_diff": round(mean_diff, 4)}
    return out


def _card(meta: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {t} | {m['accuracy']:.3f} | {m['mean_logit_diff']:.3f} |"
        for t, m in meta["metrics"].items()
    )
    arch = ARCHITECTURES[meta["architecture"]]
    return f"""# zoo:{meta["name"]}

{arch.description}: {meta["n_layers"]} layers, d_model {meta["d_model"]}, \
{meta["n_heads"]} heads, {meta["n_kv_heads"]} KV heads, d_mlp {meta["d_mlp"]}, \
{meta["n_params"]:,} parameters, context {meta["n_ctx"]}, word-level vocabulary of \
{meta["d_vocab"]}. Trained by circuitgraph on its synthetic corpus (mix `{meta["mix"]}`, \
see `circuitgraph/zoo/corpus.py`) for the tasks {", ".join(meta["tasks"])}.

- training: {meta["steps"]} steps of {meta["batch_size"]} documents, seed {meta["seed"]}, \
torch threads {meta["threads"]}, {meta["train_seconds"]:.0f} s on the CPU; final loss \
{meta["final_loss"]:.4f} (mean training loss of the last 100 steps)
- reproduce: `{meta["command"]}` (writes this directory; add `--out DIR` to write elsewhere);
  `pytest -m slow tests/zoo/test_retrain.py` checks that retraining reproduces the figures below

Held-out evaluation ({meta["eval_n"]} pairs from `make_pairs(task, tokenizer, \
{meta["eval_n"]}, seed={meta["eval_seed"]})`, clean prompts, logit(answer) − logit(wrong) at the \
answer position, measured after loading this directory with `load_model`):

| task | share with logit_diff > 0 | mean logit_diff |
|---|---|---|
{rows}
"""


def _command(spec: ModelSpec, threads: int) -> str:
    steps = "" if spec.steps == SPECS[spec.name].steps else f" --steps {spec.steps}"
    return (
        f"python -m circuitgraph.train --model {spec.name} --seed {spec.seed} "
        f"--threads {threads}{steps}"
    )


def write_model(
    spec: ModelSpec, out: Path, threads: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train ``spec`` and write its directory (weights, tokenizer, zoo.json, README.md)."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_word_tokenizer(corpus.vocabulary(), out)
    start = time.perf_counter()
    model, final_loss = train(spec, tokenizer, log)
    seconds = time.perf_counter() - start
    ARCHITECTURES[spec.architecture].save(model, spec, len(tokenizer), out)
    meta: dict[str, Any] = {
        **asdict(spec),
        "architecture": ARCHITECTURES[spec.architecture].label,
        "tasks": list(spec.tasks),
        "d_vocab": len(tokenizer),
        "n_ctx": N_CTX,
        "n_params": sum(p.numel() for p in model.parameters()),
        "final_loss": round(final_loss, 4),
        "train_seconds": round(seconds, 1),
        "threads": threads,
        "torch": torch.__version__,
        "command": _command(spec, threads),
        "eval_n": EVAL_N,
        "eval_seed": EVAL_SEED,
    }
    meta["metrics"] = measure(out, spec.tasks)
    (out / "zoo.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(_card(meta))
    log(f"{spec.name}: {json.dumps(meta['metrics'])}")
    return meta


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m circuitgraph.train", description=__doc__)
    parser.add_argument("--model", required=True, help=f"one of {sorted(SPECS)}")
    parser.add_argument("--seed", type=int, default=None, help="default: the spec's seed")
    parser.add_argument("--out", default=None, help="default: the package's zoo/models/NAME")
    parser.add_argument("--steps", type=int, default=None, help="default: the spec's steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the written ``zoo.json`` content."""
    args = _parse(argv)
    if args.model not in SPECS:
        raise ConfigError(
            f"expected a zoo model among {sorted(SPECS)} but got {args.model!r}; pick one of those"
        )
    spec = SPECS[args.model]
    overrides = {"seed": args.seed, "steps": args.steps}
    spec = ModelSpec(**{**asdict(spec), **{k: v for k, v in overrides.items() if v is not None}})
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else _ROOT / spec.name
    return write_model(spec, out, args.threads, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
