"""Speed, memory and scaling of the estimators against the bare model's own passes.

Every figure is a ratio of two timings taken in the same run on the same batch (see
:mod:`circuitgraph.bench.common` for the timing method):

* ``atp``: node AtP / (2 forward + 1 backward)                           target ≤ 1.3
* ``atp*``: AtP* / (2 forward + (L+1) backward)                           target ≤ 1.3
* ``eap``: edge AtP over all edges / (2 forward + 1 backward)             target ≤ 1.5
* ``sweep``: exact sweep time per node / one bare forward                target ≤ 1.2
* ``memory``: peak RSS of EAP over all edges / peak of a plain forward + backward with
  parameter gradients, each in a fresh process (Linux; VmHWM reset once the model and
  batch are loaded; on a GPU, torch's peak allocated memory there)         target ≤ 2

A bare backward is the gradient of the summed metric with respect to the embedding output.
Nodes are heads with q/k/v and MLPs (``head, q, k, v, mlp``).

    python -m circuitgraph.bench.speed --memory-worker DIR eap 8 32 1 cpu   # internal: one peak
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from circuitgraph.attribution import EdgeSet, attribute_edges, attribute_nodes
from circuitgraph.bench.common import bare_passes, hf_passes, interleaved_min, random_pairs
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.tasks.metrics import answer_logits, get_metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = [
    "KINDS",
    "TARGETS",
    "atp_timings",
    "bridge_timings",
    "eap_timings",
    "fit_linear",
    "memory_ratio",
    "scaling",
    "speed_ratios",
    "sweep_timings",
]

KINDS = ("head", "q", "k", "v", "mlp")
TARGETS = {"atp": 1.3, "atp*": 1.3, "eap": 1.5, "sweep": 1.2, "memory": 2.0, "bridge": 1.3}


def _timed(
    fns: Mapping[str, Callable[[], object]], repeats: int, warm_up: bool = True
) -> dict[str, float]:
    """Interleaved minimum, after one untimed warm-up round unless ``warm_up`` is false (big
    models: the minimum over the repeats already leaves out a cold first run)."""
    if warm_up:
        interleaved_min(fns, 1)
    return interleaved_min(fns, repeats)


def atp_timings(
    model: Any, info: Any, pairs: PromptPairs, repeats: int, warm_up: bool = True
) -> dict[str, float]:
    """Seconds of AtP, AtP* and the bare 2f+1b and 2f+(L+1)b, timed alternately.

    Example:
        >>> t = atp_timings(model, info, pairs, 3)  # doctest: +SKIP
        >>> t["atp"] / t["bare_1"]  # doctest: +SKIP
    """

    def estimator(method: str) -> Callable[[], object]:
        return lambda: attribute_nodes(
            model, pairs, method=method, kinds=KINDS, batch_size=len(pairs)
        )

    fns = {
        "bare_1": bare_passes(model, pairs, 1),
        "atp": estimator("atp"),
        "bare_L1": bare_passes(model, pairs, info.n_layers + 1),
        "atp*": estimator("atp*"),
    }
    return _timed(fns, repeats, warm_up)


def eap_timings(
    model: Any, info: Any, pairs: PromptPairs, repeats: int, warm_up: bool = True
) -> dict[str, float]:
    """Seconds of EAP over all edges and of the bare 2f+1b; ``edges`` their number.

    Example:
        >>> eap_timings(model, info, pairs, 3)["edges"]  # doctest: +SKIP
    """
    cands = EdgeSet.full(info)
    fns = {
        "bare_1": bare_passes(model, pairs, 1),
        "eap": lambda: attribute_edges(
            model, pairs, "logit_diff", "eap", cands, batch_size=len(pairs)
        ),
    }
    return {"edges": float(len(cands.edges())), **_timed(fns, repeats, warm_up)}


def sweep_timings(
    model: Any, info: Any, pairs: PromptPairs, repeats: int, warm_up: bool = True
) -> dict[str, float]:
    """Seconds of one bare forward and of the exact sweep per node (whole sweep / nodes).

    Example:
        >>> t = sweep_timings(model, info, pairs, 2)  # doctest: +SKIP
    """
    nodes = enumerate_nodes(info, ["head", "mlp"])

    def bare() -> None:
        with torch.no_grad():
            model(pairs.clean)

    fns = {
        "bare_fwd": bare,
        "sweep": lambda: patch_nodes(model, pairs, nodes, batch_size=len(pairs)),
    }
    t = _timed(fns, repeats, warm_up)
    return {
        "nodes": float(len(nodes)),
        "bare_fwd": t["bare_fwd"],
        "per_node": t["sweep"] / len(nodes),
    }


def bridge_timings(
    model: Any, pairs: PromptPairs, repeats: int, warm_up: bool = True
) -> dict[str, float] | None:
    """Seconds of the bare 2f+1b through the bridge and through the HF module it wraps
    (None for a TL-native model, which wraps no HF module).

    Example:
        >>> t = bridge_timings(model, pairs, 3)  # doctest: +SKIP
        >>> t["bridge"] / t["hf"]  # doctest: +SKIP
    """
    if not hasattr(getattr(model, "original_model", None), "get_input_embeddings"):
        return None
    fns = {"bridge": bare_passes(model, pairs, 1), "hf": hf_passes(model, pairs, 1)}
    return _timed(fns, repeats, warm_up)


def speed_ratios(
    model: Any, info: Any, pairs: PromptPairs, repeats: int, warm_up: bool = True
) -> dict[str, Any]:
    """All timing ratios of one model on one batch.

    Example:
        >>> r = speed_ratios(model, info, pairs, 3)  # doctest: +SKIP
        >>> r["ratios"]["atp"] <= 1.3  # doctest: +SKIP
    """
    a = atp_timings(model, info, pairs, repeats, warm_up)
    e = eap_timings(model, info, pairs, repeats, warm_up)
    s = sweep_timings(model, info, pairs, repeats, warm_up)
    b = bridge_timings(model, pairs, repeats, warm_up)
    ratios = {
        "atp": a["atp"] / a["bare_1"], "atp*": a["atp*"] / a["bare_L1"],
        "eap": e["eap"] / e["bare_1"], "sweep": s["per_node"] / s["bare_fwd"],
    }  # fmt: skip
    seconds: dict[str, Any] = {"atp": a, "eap": e, "sweep": s}
    if b is not None:
        ratios["bridge"], seconds["bridge"] = b["bridge"] / b["hf"], b
    return {"seconds": seconds, "ratios": ratios}


# ---- memory ------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise ConfigError(f"/proc/self/status has no {field}; peak memory needs Linux")


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _plain_forward_backward(model: Any, pairs: PromptPairs) -> None:
    """What a user's plain forward + backward does: parameter gradients included."""
    metric = get_metric("logit_diff")
    with torch.no_grad():
        model(pairs.corrupt)
    metric(answer_logits(model(pairs.clean), pairs), pairs).sum().backward()
    model.zero_grad(set_to_none=True)


def memory_worker(
    spec: str, what: str, n_pairs: int, seq: int, device: str = "cpu"
) -> dict[str, float]:
    """Run one memory measurement in this process; working memory above the loaded model.

    On CPU the peak resident set size (VmHWM); on a GPU the peak of memory allocated by
    torch on it.

    Example:
        >>> memory_worker("zoo:attn-only-2l", "eap", 4, 16)["peak_mb"] > 0  # doctest: +SKIP
        True
    """
    from circuitgraph.bench.common import load_spec

    model, info = load_spec(spec, device)
    pairs = random_pairs(info.d_vocab, n_pairs, seq).to(device)
    cands = EdgeSet.full(info)
    gpu = torch.device(device).type == "cuda"
    before = _reset_gpu_peak() if gpu else _reset_peak()  # loading peaks higher than the work
    if what == "bare":
        _plain_forward_backward(model, pairs)
    else:
        attribute_edges(model, pairs, "logit_diff", "eap", cands, batch_size=n_pairs)
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else _status_mb("VmHWM")
    return {"peak_mb": peak - before}


def _reset_gpu_peak() -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def _in_fresh_process(spec: str, what: str, n_pairs: int, seq: int, device: str) -> float:
    cmd = [sys.executable, "-m", "circuitgraph.bench.speed", "--memory-worker", spec, what]
    cmd += [str(n_pairs), str(seq), str(torch.get_num_threads()), device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def memory_ratio(spec: str, n_pairs: int, seq: int, device: str = "cpu") -> dict[str, float]:
    """Peak MB of EAP over all edges and of a plain fwd+bwd, each in a fresh process.

    ``spec`` is anything :func:`~circuitgraph.bench.common.load_spec` takes (a folder for a
    random model, so the child loads the same weights).

    Example:
        >>> memory_ratio("zoo:attn-only-2l", 8, 32)["ratio"]  # doctest: +SKIP
    """
    bare = _in_fresh_process(spec, "bare", n_pairs, seq, device)
    eap = _in_fresh_process(spec, "eap", n_pairs, seq, device)
    return {"bare_mb": bare, "eap_mb": eap, "ratio": eap / bare}


# ---- scaling -----------------------------------------------------------------------------


def fit_linear(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line y = a + b x and its R².

    Example:
        >>> fit_linear([1, 2, 3], [2, 4, 6])
        {'intercept': 0.0, 'slope': 2.0, 'r2': 1.0}
    """
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return {"intercept": round(intercept, 12), "slope": round(slope, 12), "r2": round(r2, 12)}


def _atp_seconds(model: Any, pairs: PromptPairs, repeats: int) -> float:
    def fn() -> object:
        return attribute_nodes(model, pairs, method="atp*", kinds=KINDS, batch_size=len(pairs))

    return _timed({"atp*": fn}, repeats)["atp*"]


def scaling(
    models: dict[str, tuple[Any, Any]], pairs_grid: list[int], seq_grid: list[int], base: tuple[int, int],
    repeats: int, sweep: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """AtP* time against the number of pairs, the sequence length and the model size.

    ``models`` maps a label to (model, info), smallest first; the one labelled ``sweep``
    (default: the first) is used for the pair and length sweeps, ``base`` = (pairs, seq)
    is the batch held fixed in the other sweeps. The pair sweep gets a straight-line fit
    (the claim: linear in pairs); on a model too small for the work per pair to outweigh
    fixed per-call costs, that fit measures noise.

    Example:
        >>> s = scaling({"tiny": (model, info)}, [2, 4, 8], [8, 16], (4, 16), 2)  # doctest: +SKIP
        >>> s["pairs"]["fit"]["r2"] > 0.95  # doctest: +SKIP
    """
    label = sweep if sweep is not None else next(iter(models))
    model, info = models[label]
    n0, t0 = base
    by_pairs = [_atp_seconds(model, random_pairs(info.d_vocab, n, t0), repeats) for n in pairs_grid]
    by_seq = [_atp_seconds(model, random_pairs(info.d_vocab, n0, t), repeats) for t in seq_grid]
    by_size = {}
    for name, (m, i) in models.items():
        params = sum(p.numel() for p in m.parameters())
        by_size[name] = {
            "params": params,
            "seconds": _atp_seconds(m, random_pairs(i.d_vocab, n0, t0), repeats),
        }
    return {
        "method": "atp*", "model": label, "base": {"pairs": n0, "seq": t0},
        "pairs": {"x": pairs_grid, "seconds": by_pairs, "fit": fit_linear([float(x) for x in pairs_grid], by_pairs)},
        "seq": {"x": seq_grid, "seconds": by_seq},
        "size": by_size,
    }  # fmt: skip


def _worker_main(argv: list[str]) -> None:
    spec, what, n_pairs, seq, threads, device = argv
    torch.set_num_threads(int(threads))
    print(json.dumps(memory_worker(spec, what, int(n_pairs), int(seq), device)))


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--memory-worker":
        _worker_main(sys.argv[2:])
    else:
        sys.exit(
            "usage: python -m circuitgraph.bench.speed --memory-worker SPEC WHAT N T THREADS DEVICE"
        )
