"""Attribution: node screening (AtP, AtP*, baselines), edge attribution (EAP, EAP-IG, edge
AtP*), exact patching behind the same contract, verification and diagnostics.

Every estimator has one signature and is looked up by name in a registry (no if/elif on
strings); :func:`attribute_nodes` and :func:`attribute_edges` resolve the metric and the
options once and hand them over::

    node estimator(model, pairs, nodes, metric, opts, **options) -> NodeScores
    edge estimator(model, pairs, candidates, metric, opts, **options) -> EdgeScores

Node methods: ``atp``, ``atp+qkfix``, ``atp+graddrop``, ``atp*``, ``atp*-mean`` (GradDrop after
the mean over pairs), ``atp-ig`` (integrated gradients per hook site), ``exact`` and the
baselines ``subsampling``, ``blocks``, ``random``. Edge methods: ``eap``, ``eap-ig``, ``atp*``,
``exact``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from circuitgraph.arch import Arch
from circuitgraph.attribution import (  # noqa: F401  (they register methods)
    atp,
    atp_ig,
    baselines,
    edges,
    edges_star,
    exact,
    graddrop_mean,
)
from circuitgraph.attribution.candidates import EdgeSet, edge_candidates
from circuitgraph.attribution.diagnostics import Diagnosis, diagnose
from circuitgraph.attribution.registry import (
    EDGE_ESTIMATORS,
    ESTIMATORS,
    Estimator,
    Level,
    lookup,
    method_names,
    register,
)
from circuitgraph.attribution.sequential import diagnose_until
from circuitgraph.attribution.verify import Verification, verify_auto, verify_nodes
from circuitgraph.errors import ConfigError
from circuitgraph.model import model_info
from circuitgraph.nodes import Node, fixed, node_array
from circuitgraph.run import Progress, resolve
from circuitgraph.scores import EdgeScores, NodeScores
from circuitgraph.tasks.metrics import Metric, check_finite
from circuitgraph.tasks.pairs import PromptPairs

__all__ = [
    "EDGE_ESTIMATORS",
    "ESTIMATORS",
    "Diagnosis",
    "EdgeSet",
    "Estimator",
    "Verification",
    "attribute_edges",
    "attribute_nodes",
    "diagnose",
    "diagnose_until",
    "edge_candidates",
    "get_estimator",
    "method_names",
    "register",
    "verify_auto",
    "verify_nodes",
]


def get_estimator(name: str, level: Level = "node") -> Estimator:
    """The node (or, with ``level="edge"``, edge) estimator registered as ``name``.

    Example:
        >>> get_estimator("atp*").__name__, get_estimator("eap", "edge").__name__
        ('atp_star', 'eap')
    """
    return lookup(name, level)


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
    layers: Sequence[int] | None = None,
    **options: Any,
) -> NodeScores:
    """Score every node of the given kinds (or the given ``nodes``) with one method.

    Args:
        method: a node method name (:func:`method_names`; ``atp*`` by default).
        kinds: node kinds to enumerate (ignored when ``nodes`` is given).
        layers: enumerate nodes in these layers only (all by default; ignored when
            ``nodes`` is given).
        per_position: one node per token position.
        mode: ``noising`` (patch noise into the clean run) or ``denoising``.
        progress: called with the work just done: pairs for the gradient methods, patched
            rows (sets × pairs) for the patching ones.
        options: passed to the estimator (e.g. ``n_subsets`` for ``subsampling``).

    Returns:
        :class:`NodeScores` with ``signed`` = E Î and ``score`` what the method ranks by
        (``meta["ranked_by"]``); pass counts are per prompt pair.

    Example:
        >>> scores = attribute_nodes(model, pairs, "logit_diff", method="atp*")  # doctest: +SKIP
        >>> [n.id for n in scores.top_k(3)]  # doctest: +SKIP
        ['a1.h2', 'm0', 'a0.h3<k>']
    """
    estimator = get_estimator(method)
    pairs, resolved, opts = resolve(model, pairs, metric, batch_size, mode, progress)
    if nodes is None:
        seq_len = pairs.seq_len if per_position else None
        nodes = node_array(model_info(model), kinds, per_position, seq_len, layers)
    scores: NodeScores = estimator(model, pairs, fixed(nodes), resolved, opts, **options)
    check_finite(scores.score, f"the {method} node scores")
    return scores


def attribute_edges(
    model: Any,
    pairs: PromptPairs,
    metric: str | Metric = "logit_diff",
    method: str = "eap",
    candidates: EdgeSet | None = None,
    batch_size: int = 32,
    mode: str = "noising",
    progress: Progress | None = None,
    **options: Any,
) -> EdgeScores:
    """Score every candidate edge (all edges by default) with one method.

    Args:
        method: an edge method name (``eap``, ``eap-ig``, ``atp*``, ``exact``).
        candidates: the edges to score, e.g. :func:`edge_candidates` among screened nodes.
        options: passed to the estimator (e.g. ``steps`` for ``eap-ig``).

    Example:
        >>> scores = attribute_edges(model, pairs, "logit_diff", method="eap")  # doctest: +SKIP
        >>> [e.id for e in scores.top_k(3)]  # doctest: +SKIP
    """
    estimator = get_estimator(method, "edge")
    pairs, resolved, opts = resolve(model, pairs, metric, batch_size, mode, progress)
    arch = Arch.of(model)
    cands = candidates if candidates is not None else EdgeSet.full(arch.info)
    _check_candidates(arch, cands)
    scores: EdgeScores = estimator(model, pairs, cands, resolved, opts, **options)
    check_finite(scores.signed, f"the {method} edge scores")
    return scores


def _check_candidates(arch: Arch, cands: EdgeSet) -> None:
    """Refuse candidate edges the model does not have (a head into its own layer's MLP in
    a parallel block: build the set with ``EdgeSet.full(info)`` or ``edge_candidates``)."""
    if not arch.parallel or not cands.sources or not cands.targets:
        return
    head_layer = torch.tensor([s.layer if s.kind == "head" else -2 for s in cands.sources])
    mlp_layer = torch.tensor([t.layer if t.kind == "mlp" else -3 for t in cands.targets])
    bad = (cands.valid & (head_layer[:, None] == mlp_layer[None, :])).nonzero()
    if len(bad):
        src, dst = cands.sources[int(bad[0, 0])], cands.targets[int(bad[0, 1])]
        raise ConfigError(
            f"expected candidate edges of this model but got {src.id}->{dst.id}, which it "
            "does not have (attention and MLP of a layer run in parallel here); build the "
            "candidates with EdgeSet.full(info) or edge_candidates(info, ...)"
        )
