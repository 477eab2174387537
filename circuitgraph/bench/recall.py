"""Cost of verified recall: how many forward passes a method needs to find the true top-k.

Definitions (all costs are forward-pass equivalents per prompt pair):

* Ground truth: the exact sweep (:func:`circuitgraph.patching.patch_nodes`), one forward
  pass per node; its ranking by |E I(n)| gives the true top-k (ties keep node order).
* A method's own cost: its forward passes plus **2 per backward pass** (a backward pass
  costs about two forward passes). For ``subsampling`` and ``blocks`` this is their own
  patching passes; ``random`` costs nothing.
* Verification: the nodes are then verified by exact patching in the method's ranked order,
  1 forward pass each.
* cost(k) = method cost + the number of nodes verified until every node of the exact top-k
  is among the verified ones.
* Exhaustive cost = number of nodes + 2 (the sweep's clean and corrupt runs).
* Speed-up(k) = exhaustive cost / cost(k). ``random`` is averaged over several seeds.

k runs over 1, 5, 10 and 1% of the nodes (at least 1), each capped at the node count.

Example:
    >>> verified_recall_cost(["a", "b", "c", "d"], ["c", "a"], 2)
    3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from circuitgraph.attribution import attribute_nodes
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node, enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.pairs import PromptPairs

__all__ = [
    "KIND_SETS",
    "METHODS",
    "RecallSetting",
    "k_values",
    "method_cost",
    "recall_curve",
    "recall_setting",
    "verified_recall_cost",
]

METHODS = ("atp", "atp+qkfix", "atp+graddrop", "atp*", "subsampling", "blocks", "random")
KIND_SETS: dict[str, tuple[str, ...]] = {"heads": ("head", "q", "k", "v"), "neurons": ("neuron",)}
BACKWARD_COST = 2.0


@dataclass(frozen=True)
class RecallSetting:
    """One model × task × node-kind setting of the recall benchmark."""

    model: str
    task: str
    kinds: str
    n_pairs: int = 16
    random_seeds: int = 5
    baseline_budget: float = 0.25  # subsampling / blocks passes, as a fraction of the nodes


def verified_recall_cost(ranking: Sequence[Any], truth: Sequence[Any], k: int) -> int:
    """Nodes verified, in ``ranking`` order, until the first ``k`` of ``truth`` are all seen.

    Example:
        >>> verified_recall_cost([3, 1, 2, 0], [0, 1, 2, 3], 1)
        4
    """
    wanted = set(truth[:k])
    if not wanted <= set(ranking):
        raise ConfigError("expected the ranking to hold every node of the true top-k")
    pos = {n: i for i, n in enumerate(ranking)}
    return max(pos[n] for n in wanted) + 1


def k_values(n_nodes: int) -> dict[str, int]:
    """The k of the benchmark, by label: 1, 5, 10 and 1% of the nodes (capped at n).

    Example:
        >>> k_values(300)
        {'1': 1, '5': 5, '10': 10, '1%': 3}
    """
    ks = {"1": 1, "5": 5, "10": 10, "1%": max(1, math.ceil(0.01 * n_nodes))}
    return {label: min(k, n_nodes) for label, k in ks.items()}


def method_cost(scores: NodeScores) -> float:
    """A method's own cost: forward passes + 2 × backward passes, per pair.

    Example:
        >>> import torch
        >>> from circuitgraph.nodes import Node
        >>> s = NodeScores((Node("mlp", 0),), torch.zeros(1), torch.zeros(1), "atp",
        ...                "logit_diff", 1, forward_passes=2.0, backward_passes=1.0)
        >>> method_cost(s)
        4.0
    """
    return float(scores.forward_passes) + BACKWARD_COST * float(scores.backward_passes)


def recall_curve(ranking: Sequence[Any], truth: Sequence[Any], k: int) -> list[float]:
    """Recall of the true top-k after verifying 0, 1, …, n nodes in ``ranking`` order.

    Example:
        >>> recall_curve(["b", "a", "c"], ["a", "b", "c"], 2)
        [0.0, 0.5, 1.0, 1.0]
    """
    wanted = set(truth[:k])
    found, out = 0, [0.0]
    for n in ranking:
        found += n in wanted
        out.append(found / k)
    return out


def _run_method(
    model: Any, pairs: PromptPairs, nodes: list[Node], method: str, setting: RecallSetting,
    seed: int,
) -> NodeScores:  # fmt: skip
    budget = max(2, math.ceil(setting.baseline_budget * len(nodes)))
    by_method: dict[str, dict[str, Any]] = {
        "random": {"seed": seed},
        "subsampling": {"n_subsets": budget, "seed": seed},
        "blocks": {"budget": float(budget)},
    }
    options = by_method.get(method, {})
    return attribute_nodes(
        model, pairs, "logit_diff", method, nodes=nodes, batch_size=len(pairs), **options
    )


def recall_setting(
    model: Any, info: Any, pairs: PromptPairs, setting: RecallSetting
) -> dict[str, Any]:
    """Ground truth and every method's cost of verified recall for one setting.

    Returns a JSON-ready dict: ``nodes``, ``exhaustive_cost``, ``k`` and per method its
    ``own_cost``, ``cost`` and ``speedup`` per k label, and a ``curve`` (recall of the
    largest k against cost, cut where it reaches 1) for the plot.

    Example:
        >>> r = recall_setting(model, info, pairs, RecallSetting("zoo:x", "induction", "heads"))  # doctest: +SKIP
        >>> r["methods"]["atp*"]["speedup"]["10"]  # doctest: +SKIP
    """
    nodes = enumerate_nodes(info, KIND_SETS[setting.kinds])
    if not nodes:
        raise ConfigError(f"the model has no {setting.kinds} nodes")
    exact = patch_nodes(model, pairs, nodes, batch_size=len(pairs))
    truth = exact.ranking()
    ks = k_values(len(nodes))
    curve_k = max(ks.values())
    exhaustive = float(len(nodes)) + 2.0
    methods: dict[str, Any] = {}
    for method in METHODS:
        seeds = range(setting.random_seeds if method == "random" else 1)
        runs = [_run_method(model, pairs, nodes, method, setting, s) for s in seeds]
        methods[method] = _summarise(runs, truth, ks, curve_k, exhaustive)
    return {
        "model": setting.model, "task": setting.task, "kinds": setting.kinds,
        "n_pairs": len(pairs), "nodes": len(nodes), "exhaustive_cost": exhaustive, "k": ks,
        "curve_k": curve_k, "baseline_budget": setting.baseline_budget, "methods": methods,
    }  # fmt: skip


def _summarise(
    runs: list[NodeScores], truth: list[Node], ks: dict[str, int], curve_k: int, exhaustive: float
) -> dict[str, Any]:
    """Costs averaged over runs (seeds), and the mean recall curve."""
    own = sum(method_cost(r) for r in runs) / len(runs)
    cost = {
        label: own + sum(verified_recall_cost(r.ranking(), truth, k) for r in runs) / len(runs)
        for label, k in ks.items()
    }
    curves = [recall_curve(r.ranking(), truth, curve_k) for r in runs]
    mean_curve = [sum(c[i] for c in curves) / len(curves) for i in range(len(curves[0]))]
    mean_curve = mean_curve[: mean_curve.index(1.0) + 1]  # flat after full recall
    return {
        "own_cost": own,
        "cost": cost,
        "speedup": {label: exhaustive / c for label, c in cost.items()},
        "curve": {"cost": [own + i for i in range(len(mean_curve))], "recall": mean_curve},
    }
