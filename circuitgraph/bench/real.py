"""``circuitgraph bench --real``: the screen against exact patching on a real pretrained model.

For each task (IOI and capitals by default) on ``zoo:smollm2-135m``, on ``pairs`` prompt
pairs, one exact sweep is the truth every number is measured against:

* **heads**: the exact effect of every head output and q/k/v input (plus every MLP's output,
  to find the important MLP layers); the recall of the exact top-10 heads within AtP's and
  AtP*'s top-10 and top-20; the cost of verified recall at k = 10 (the method's own passes
  plus the nodes verified in its order until the exact top-10 are all seen) against the
  exhaustive sweep (nodes + 2), as in :mod:`circuitgraph.bench.recall`.
* **neurons** of the ``mlp_layers`` MLP layers with the largest exact effect: the same recall
  and cost.
* **edges** among the ``keep_nodes`` whole nodes AtP* ranks highest (the candidates
  ``discover`` uses): EAP and EAP-IG against exact edge patching: Spearman's rank
  correlation over all candidate edges and the overlap of the top-20.
* **circuit**: ``discover`` with its default settings: edges, nodes, faithfulness.
* the wall and process CPU time of every step, and of one forward pass.

Example:
    >>> from circuitgraph.bench.real import spearman
    >>> import torch
    >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])), 3)
    0.5
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from circuitgraph.bench.config import Say
from circuitgraph.bench.recall import method_cost, verified_recall_cost
from circuitgraph.nodes import Node

__all__ = ["HEAD_KINDS", "real_task", "recall_at", "spearman"]

HEAD_KINDS = ("head", "q", "k", "v")
METHODS = ("atp", "atp*")


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties broken by position)."""
    ra = torch.argsort(torch.argsort(a.double())).double()
    rb = torch.argsort(torch.argsort(b.double())).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float((ra.norm() * rb.norm()).clamp_min(1e-300))
    return float((ra * rb).sum()) / den


def recall_at(truth: Sequence[Any], estimate: Sequence[Any], k: int, n: int) -> int:
    """How many of the exact top-``k`` lie in the estimate's top-``n``.

    Example:
        >>> recall_at(["a", "b"], ["b", "c", "a"], 2, 2)
        1
    """
    return len(set(truth[:k]) & set(estimate[:n]))


def _timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def _screen_vs_exact(
    model: Any, pairs: Any, nodes: list[Node], exact: Any, say: Say, label: str
) -> dict[str, Any]:
    """Recall and cost of verified recall of AtP and AtP* on ``nodes`` against ``exact``."""
    from circuitgraph.attribution import attribute_nodes

    truth = [n.id for n in exact.ranking()]
    out: dict[str, Any] = {"nodes": len(nodes), "exact_top10": truth[:10]}
    for method in METHODS:
        scores, t = _timed(partial(attribute_nodes, model, pairs, method=method, nodes=nodes))
        ranked = [n.id for n in scores.ranking()]
        k = min(10, len(nodes))
        cost = method_cost(scores) + verified_recall_cost(ranked, truth, k)
        row = {
            "top10": recall_at(truth, ranked, k, 10), "top20": recall_at(truth, ranked, k, 20),
            "cost": cost, "sweep": len(nodes) + 2.0, **t,
        }  # fmt: skip
        out[method] = row
        say(
            f"  {label} {method:<5} exact top-{k} in its top-10 {row['top10']}, top-20 "
            f"{row['top20']}; verified recall cost {cost:.0f} of {len(nodes) + 2} "
            f"({row['wall_s']:.1f} s)"
        )
    return out


def _edges(model: Any, pairs: Any, info: Any, keep_nodes: int, say: Say) -> dict[str, Any]:
    """EAP and EAP-IG against exact edge patching among the top ``keep_nodes`` AtP* nodes."""
    from circuitgraph.attribution import attribute_edges, attribute_nodes, edge_candidates

    screen = attribute_nodes(model, pairs, method="atp*", kinds=(*HEAD_KINDS, "mlp"))
    cands = edge_candidates(info, screen, keep=keep_nodes)
    exact, t_exact = _timed(lambda: attribute_edges(model, pairs, method="exact", candidates=cands))
    valid = exact.valid
    truth = [e.id for e in exact.ranking()]
    out: dict[str, Any] = {"edges": int(valid.sum()), "exact": t_exact}
    say(f"  edges: {out['edges']} among {keep_nodes} kept nodes, exact {t_exact['wall_s']:.0f} s")
    for method in ("eap", "eap-ig"):
        est, t = _timed(partial(attribute_edges, model, pairs, method=method, candidates=cands))
        rho = spearman(est.signed[valid], exact.signed[valid])
        top = recall_at(truth, [e.id for e in est.ranking()], 20, 20)
        out[method] = {"spearman": rho, "top20": top, **t}
        say(
            f"  edges {method:<6} Spearman {rho:.3f}, top-20 overlap {top}/20 ({t['wall_s']:.1f} s)"
        )
    return out


def _circuit(model: Any, pairs: Any, say: Say) -> dict[str, Any]:
    """The default ``discover`` run: its size, faithfulness, target search and time; the
    circuit itself under ``graph`` (our JSON, for the caller to write and draw)."""
    from circuitgraph.export import to_json
    from circuitgraph.pipeline import discover

    found, t = _timed(lambda: discover(model, pairs))
    g = found.circuit.graph
    search = g.get("search") or {}
    out = {
        "edges": g["n_edges"], "nodes": g["n_nodes"], "keep_nodes": g.get("keep_nodes"),
        "faithfulness": found.faithfulness.faithfulness, "curve": [list(p) for p in found.curve],
        "selection": dict(g.get("selection", {})), "target": search.get("target"),
        "reached": search.get("reached"), "search": search.get("evaluations"),
        "mib": g.get("mib"), "graph": to_json(found.circuit), **t,
    }  # fmt: skip
    say(
        f"  discover (defaults): {out['edges']} edges, {out['nodes']} nodes, "
        f"F = {out['faithfulness']:.3f} ({t['wall_s']:.0f} s)"
        + (f"; {search['summary']}" if search else "")
    )
    return out


def _neurons(
    model: Any, pairs: Any, info: Any, mlp_exact: Any, mlp_layers: int, say: Say
) -> dict[str, Any]:
    """Recall on the neurons of the ``mlp_layers`` MLP layers with the largest exact effect."""
    from circuitgraph.nodes import enumerate_nodes
    from circuitgraph.patching import patch_nodes

    layers = sorted(n.layer for n in mlp_exact.ranking()[:mlp_layers])
    neurons = enumerate_nodes(info, ("neuron",), layers=layers)
    exact, t = _timed(lambda: patch_nodes(model, pairs, neurons))
    say(
        f"  exact sweep of the {len(neurons)} neurons of MLP layer(s) {layers}: {t['wall_s']:.0f} s"
    )
    return {
        "layers": layers,
        "exact": t,
        **_screen_vs_exact(model, pairs, neurons, exact, say, "neurons"),
    }


def real_task(
    model: Any,
    info: Any,
    task: str,
    n_pairs: int,
    mlp_layers: int = 1,
    keep_nodes: int = 20,
    say: Say = print,
) -> dict[str, Any]:
    """Every measurement of the module docstring for one task."""
    from circuitgraph.nodes import enumerate_nodes
    from circuitgraph.patching import patch_nodes
    from circuitgraph.tasks import make_pairs

    pairs = make_pairs(task, model.tokenizer, n_pairs, seed=0)
    with torch.no_grad():
        model(pairs.clean)  # warm-up
        _, forward = _timed(lambda: model(pairs.clean))
    say(f"{task}: {n_pairs} pairs of {pairs.seq_len} tokens; one forward {forward['wall_s']:.2f} s")
    out: dict[str, Any] = {"task": task, "pairs": n_pairs, "seq_len": pairs.seq_len}
    out["forward"] = forward
    heads = enumerate_nodes(info, HEAD_KINDS)
    mlps = enumerate_nodes(info, ("mlp",))
    exact, t = _timed(lambda: patch_nodes(model, pairs, heads + mlps))
    out["exact_heads"] = t
    say(f"  exact sweep of {len(heads) + len(mlps)} head/q/k/v/mlp nodes: {t['wall_s']:.0f} s")
    out["heads"] = _screen_vs_exact(model, pairs, heads, exact.subset(heads), say, "heads")
    if mlps:  # a model without MLPs (attention-only) has no neurons to screen
        out["neurons"] = _neurons(model, pairs, info, exact.subset(mlps), mlp_layers, say)
    out["edges"] = _edges(model, pairs, info, keep_nodes, say)
    out["circuit"] = _circuit(model, pairs, say)
    return out
