"""Node attribution: AtP and AtP* screening, exact patching, baselines, verification, diagnostics.

Every estimator has one signature and is looked up by name (no if/elif on strings)::

    estimator(model, pairs, nodes, metric, *, batch_size, mode, progress, **options) -> NodeScores

Methods: ``atp``, ``atp+qkfix``, ``atp+graddrop``, ``atp*``, ``atp*-mean`` (GradDrop after
the mean over pairs), ``atp-ig`` (integrated gradients per hook site), ``exact`` and the
baselines ``subsampling``, ``blocks``, ``random``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from circuitgraph.attribution import (  # noqa: F401  (they register methods)
    atp_ig,
    baselines,
    edges_star,
    graddrop_mean,
)
from circuitgraph.attribution.atp import ESTIMATORS, Estimator, get_estimator, register
from circuitgraph.attribution.diagnostics import Diagnosis, diagnose
from circuitgraph.attribution.sequential import diagnose_until
from circuitgraph.attribution.verify import Verification, verify_auto, verify_nodes
from circuitgraph.model import model_info
from circuitgraph.nodes import Node, enumerate_nodes
from circuitgraph.patching import Progress
from circuitgraph.scores import NodeScores
from circuitgraph.tasks.metrics import Metric, check_finite
from circuitgraph.tasks.pairs import PromptPairs

__all__ = [
    "ESTIMATORS",
    "Diagnosis",
    "Estimator",
    "Verification",
    "attribute_nodes",
    "diagnose",
    "diagnose_until",
    "get_estimator",
    "register",
    "verify_auto",
    "verify_nodes",
]


def attribute_nodes(
    model: Any,
    pairs: PromptPairs,
    metric: str | Metric = "logit_diff",
    method: str = "atp*",
    kinds: Sequence[str] = ("head", "q", "k", "v", "mlp"),
    per_position: bool = False,
    batch_size: int = 32,
    mode: str = "noising",
    progress: Progress | None = None,
    nodes: Sequence[Node] | None = None,
    **options: Any,
) -> NodeScores:
    """Score every node of the given kinds (or the given ``nodes``) with one method.

    Args:
        method: a name from :data:`ESTIMATORS` (``atp*`` by default).
        kinds: node kinds to enumerate (ignored when ``nodes`` is given).
        per_position: one node per token position.
        mode: ``noising`` (patch noise into the clean run) or ``denoising``.
        progress: called with the work just done: pairs for the gradient methods, patched
            rows (sets × pairs) for the patching ones.
        options: passed to the estimator (e.g. ``n_subsets`` for ``subsampling``).

    Returns:
        :class:`NodeScores` with ``signed`` = E Î and ``score`` what the method ranks by
        (``meta["ranks_by"]``); pass counts are per prompt pair.

    Example:
        >>> scores = attribute_nodes(model, pairs, "logit_diff", method="atp*")  # doctest: +SKIP
        >>> [n.id for n in scores.top_k(3)]  # doctest: +SKIP
        ['a1.h2', 'm0', 'a0.h3<k>']
    """
    estimator = get_estimator(method)
    if nodes is None:
        seq_len = pairs.seq_len if per_position else None
        nodes = enumerate_nodes(model_info(model), kinds, per_position, seq_len)
    scores: NodeScores = estimator(
        model, pairs, list(nodes), metric,
        batch_size=batch_size, mode=mode, progress=progress, **options,
    )  # fmt: skip
    check_finite(scores.score, f"the {method} node scores")
    return scores
