"""The five parts of :func:`circuitgraph.bench.run_bench`, each ``part(config, say) -> dict``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from circuitgraph.bench.common import SHAPES, load_spec, random_dir, random_pairs
from circuitgraph.tasks.pairs import PromptPairs

if TYPE_CHECKING:
    from circuitgraph.bench.config import BenchConfig, Say

__all__ = ["memory_part", "peer_part", "recall_part", "scaling_part", "speed_part"]


def _is_big(spec: str) -> bool:
    from circuitgraph.bench.config import BIG

    return spec in BIG


def _zoo_tasks(spec: str) -> tuple[str, ...]:
    from circuitgraph import zoo

    name = spec.split(":", 1)[1]
    return next((m.tasks for m in zoo.list_models() if m.name == name), ())


def _batch(spec: str, model: Any, info: Any, n: int, t: int) -> PromptPairs:
    """The model's first task's pairs (zoo) or random token pairs of length ``t``."""
    from circuitgraph.tasks import make_pairs

    tasks = _zoo_tasks(spec) if spec.startswith("zoo:") else ()
    if tasks:
        return make_pairs(tasks[0], model.tokenizer, n, seed=0, max_len=info.n_ctx)
    return random_pairs(info.d_vocab, n, t)


def recall_part(config: BenchConfig, say: Say) -> list[dict[str, Any]]:
    """Cost of verified recall for every zoo model × task × node-kind setting."""
    from circuitgraph.bench.recall import KIND_SETS, RecallSetting, recall_setting
    from circuitgraph.nodes import enumerate_nodes
    from circuitgraph.tasks import make_pairs

    out = []
    for spec in (s for s in config.models if s.startswith("zoo:")):
        model, info = load_spec(spec)
        for task in _zoo_tasks(spec):
            pairs = make_pairs(
                task, model.tokenizer, config.recall_pairs, seed=0, max_len=info.n_ctx
            )
            for kinds in config.recall_kinds:
                if not enumerate_nodes(info, KIND_SETS[kinds]):
                    continue
                say(f"recall: {spec} {task} {kinds}")
                setting = RecallSetting(spec, task, kinds, config.recall_pairs, config.random_seeds)
                out.append(recall_setting(model, info, pairs, setting))
    return out


def speed_part(config: BenchConfig, say: Say) -> dict[str, Any]:
    """Speed ratios of every model (big random shapes on the smaller batch, fewer repeats)."""
    from circuitgraph.bench.speed import speed_ratios

    out = {}
    for spec in config.models:
        say(f"speed: {spec}")
        model, info = load_spec(spec, config.device)
        big = _is_big(spec)
        repeats = config.big_repeats if big else config.repeats
        for key, (n, t) in _batches(spec, config, config.big_batch if big else config.speed_batch):
            pairs = _batch(spec, model, info, n, t).to(config.device)
            out[key] = {"batch": [len(pairs), int(pairs.clean.shape[1])], "layers": info.n_layers,
                        **speed_ratios(model, info, pairs, repeats, warm_up=not big)}  # fmt: skip
        del model
    return out


def _batches(
    spec: str, config: BenchConfig, default: tuple[int, int]
) -> list[tuple[str, tuple[int, int]]]:
    """(result key, batch) for each batch a model runs at: its default batch under its own
    name, or every configured batch under ``spec@NxT``."""
    if not config.batches:
        return [(spec, default)]
    return [(f"{spec}@{n}x{t}", (n, t)) for n, t in config.batches]


def _child_spec(spec: str) -> str:
    """What a fresh process loads: the same folder for a random model (a shape built on the
    device is built again there, from the same seed)."""
    if not spec.startswith("random:"):
        return spec
    shape = spec.split(":", 1)[1]
    return spec if SHAPES.get(shape, {}).get("on_device") else random_dir(shape)


def memory_part(config: BenchConfig, say: Say) -> dict[str, Any]:
    """Peak memory of EAP over all edges / a plain forward + backward, per model."""
    from circuitgraph.bench.speed import memory_ratio

    out = {}
    for spec in config.models if config.memory_models is None else config.memory_models:
        say(f"memory: {spec}")
        for key, (n, t) in _batches(spec, config, config.memory_batch):
            out[key] = {"batch": [n, t], **memory_ratio(_child_spec(spec), n, t, config.device)}
    return out


def scaling_part(config: BenchConfig, say: Say) -> dict[str, Any]:
    """AtP* time against pairs, sequence length and model size."""
    from circuitgraph.bench.speed import scaling

    say("scaling: " + ", ".join(config.scaling_models))
    models = {spec: load_spec(spec) for spec in config.scaling_models}
    if config.scaling_sweep is not None and config.scaling_sweep not in models:
        models[config.scaling_sweep] = load_spec(config.scaling_sweep)
    return scaling(models, list(config.scaling_pairs), list(config.scaling_seq),
                   config.scaling_base, config.scaling_repeats, config.scaling_sweep)  # fmt: skip


def peer_part(config: BenchConfig, say: Say) -> dict[str, Any]:
    """Our EAP against TransformerLens's; models it does not support say why."""
    from circuitgraph.bench.peer import peer_comparison

    gpt2_zoo = tuple(s for s in config.models if s.startswith("zoo:gpt2"))
    out: dict[str, Any] = {}
    n, t = config.peer_batch
    for spec in (*config.peer_models, *gpt2_zoo):
        say(f"peer: {spec}")
        model, info = load_spec(spec)
        pairs = random_pairs(info.d_vocab, n, t)
        try:
            out[spec] = peer_comparison(model, info, pairs, config.peer_repeats)
        except (NotImplementedError, ValueError) as err:  # TransformerLens refuses the model
            out[spec] = {"unsupported": str(err).splitlines()[0]}
    return out
