"""Scores → pruned circuit → ``networkx.DiGraph``.

:func:`build_circuit` picks edges from an :class:`~circuitgraph.scores.EdgeScores` (top-n by
absolute score, a score threshold, or greedily from the logits backwards), keeps only what
lies on an ``input`` → ``logits`` path, and returns a DiGraph whose node keys are node ids.

Representation (DESIGN §3 ids):

* A head is two kinds of node: its inputs ``a3.h5<q>``, ``a3.h5<k>``, ``a3.h5<v>`` (edge
  targets) and its output ``a3.h5`` (edge source). An *internal* edge ``a3.h5<q> -> a3.h5``
  (attribute ``internal=True``, no score) joins them, so a path reads
  ``input -> a0.h1 -> a3.h5<q> -> a3.h5 -> logits``. A grouped KV input ``a3.kv1<k>`` gets an
  internal edge to every head of its group that is in the circuit.
* An MLP is ONE node ``m2``: the target of edges into its input and the source of edges out
  of its output, so it needs no internal edge. A neuron ``m2.n17`` used as a source gets an
  internal edge ``m2 -> m2.n17`` when ``m2`` is in the circuit.
* Per-position nodes (``@t``): ``q@t`` feeds the head output at ``t``; ``k@s`` and ``v@s``
  feed the head output at every ``t >= s`` (causal attention); an MLP input at ``t`` feeds
  its neurons at ``t``. A node without a position matches every position.

Scored edges carry ``score`` (absolute, what ranks), ``signed``, ``target_input`` (``q``,
``k``, ``v``, ``mlp``, ``logits``), ``internal=False`` and ``exact`` with ``verified=True`` where verified. Nodes carry
``kind``, ``layer`` (None for ``input``/``logits``), ``position`` (None: all positions),
``head`` and ``grouped`` (heads and their inputs) or ``neuron``, and ``score``/``signed``
/``exact`` (with ``verified=True``) where given. ``G.graph`` holds the caller's ``attrs`` plus ``edge_method``,
``metric``, ``n_pairs``, ``ranked_by``, ``selection``, ``n_edges`` (scored edges, internal
ones not counted), ``n_nodes`` and, for an empty circuit, ``warning``.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, Node
from circuitgraph.scores import EdgeScores, NodeScores
from circuitgraph.search import DEFAULT_MAX_EDGES, Search, check_target, search_prefix

if TYPE_CHECKING:
    from circuitgraph.model import ModelInfo

__all__ = [
    "SOURCE_KINDS",
    "TARGET_KINDS",
    "build_circuit",
    "circuit_edges",
    "circuit_from_edges",
    "edge_attributes",
    "model_attrs",
    "node_attributes",
    "path_growth",
]

#: circuits (lists of edges) → their faithfulness, one number each
Faithfulness = Callable[[Sequence[Sequence[Edge]]], Sequence[float]]

#: kinds an edge may start from / end at
SOURCE_KINDS: tuple[str, ...] = ("input", "head", "mlp", "neuron")
TARGET_KINDS: tuple[str, ...] = ("q", "k", "v", "mlp", "logits")


@dataclass(frozen=True)
class _Row:
    """One scored edge, in ranking order."""

    edge: Edge
    signed: float
    score: float


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def build_circuit(
    edge_scores: EdgeScores,
    node_scores: NodeScores | None = None,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    greedy: int | None = None,
    target: float | None = None,
    faithfulness: Faithfulness | None = None,
    max_edges: int = DEFAULT_MAX_EDGES,
    rank_by: str = "signed",
    direction: float | None = None,
    complete: bool = False,
    verified_nodes: Mapping[Node | str, float] | None = None,
    verified_edges: Mapping[Edge | str, float] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> nx.DiGraph:
    """Select edges, keep those on ``input`` → ``logits`` paths, return the circuit graph.

    Exactly one rule selects: ``top_n`` (the n highest absolute scores), ``threshold``
    (every edge with ``score >= threshold``), ``greedy`` (n edges grown from the logits
    backwards: each step adds the highest-scoring edge into a node already in the circuit)
    or ``target`` (the smallest prefix of the ranking whose completed circuit has
    faithfulness >= target and at most ``max_edges`` edges; see :mod:`circuitgraph.search`).
    ``target`` needs ``faithfulness(circuits) -> [F, ...]`` (exact circuit runs, e.g.
    :func:`~circuitgraph.patching.evaluate_circuits`) and ranks by ``rank_by``: ``"signed"``
    (``direction · signed`` first, ``direction`` the sign of L_corrupt − L_clean, by default
    the sign of the summed signed scores: edges that carry the behaviour come first, those
    that work against it last) or ``"score"`` (|score|); ``G.graph["search"]`` records every
    evaluation.

    ``complete`` (always on with ``target``): an edge with no ``input`` → source or target →
    ``logits`` path among the selected edges is not dropped; the widest such path among all
    scored edges (the one whose weakest |score| is largest) is added, its edges marked
    ``completion=True``.
    Grouped KV inputs (``a3.kv1<k>``) need the group size: ``attrs`` (or the scores' ``meta``)
    must hold ``heads_per_kv`` or ``n_heads`` and ``n_kv_heads``; :func:`model_attrs` gives
    them. When nothing survives the graph is empty and ``G.graph["warning"]`` says why.

    Example:
        >>> import torch
        >>> from circuitgraph.nodes import Node
        >>> src = (Node("input"), Node("head", 0, 0))
        >>> dst = (Node("q", 0, 0), Node("logits"))
        >>> es = EdgeScores(src, dst, torch.tensor([[1.0, 0.2], [0.0, -3.0]]),
        ...                 torch.tensor([[1.0, 0.2], [0.0, 3.0]]),
        ...                 torch.tensor([[True, True], [False, True]]), "eap", "logit_diff", 8)
        >>> G = build_circuit(es, top_n=2)
        >>> sorted(G.edges)
        [('a0.h0', 'logits'), ('a0.h0<q>', 'a0.h0'), ('input', 'a0.h0<q>')]
        >>> G.graph["n_edges"], G.edges["a0.h0", "logits"]["signed"]
        (2, -3.0)
    """
    rule, value = _selection(top_n, threshold, greedy, target)
    rows = _rows(edge_scores)
    graph_attrs = {**_plain(dict(attrs or {}), "attrs"), **_score_attrs(edge_scores, node_scores)}
    hpk = _heads_per_kv(graph_attrs, edge_scores.meta)
    pool = _Pool(rows, hpk) if complete or rule == "target" else None
    if rule == "target":
        assert pool is not None
        ranked = _ranked(rows, rank_by, direction)
        found = _search(ranked, pool, _needed(faithfulness), float(value), max_edges)
        chosen = ranked[: found.prefix]
        graph_attrs.update(ranked_by=rank_by, search=found.to_json())
    else:
        chosen = _fixed(rule, value, rows, hpk)
    chosen, added = pool.complete(chosen) if pool is not None else (list(chosen), [])
    graph_attrs["selection"] = {
        "rule": rule, "value": value, "selected": len(chosen), "completion": len(added),
    }  # fmt: skip
    verified = _keyed(verified_edges, Edge.parse)
    edges = {
        r.edge: edge_attributes(r.edge, r.signed, r.score, verified.get(r.edge)) for r in chosen
    }
    for r in added:  # widest-path edges that complete a chosen edge's path
        edges[r.edge] = {**edge_attributes(r.edge, r.signed, r.score, verified.get(r.edge)),
                         "completion": True}  # fmt: skip
    G = circuit_from_edges(
        edges,
        node_attrs=_node_extras(node_scores, _keyed(verified_nodes, Node.parse)),
        attrs=graph_attrs,
        heads_per_kv=hpk,
    )
    G.graph["selection"]["dropped_off_path"] = len(chosen) + len(added) - G.graph["n_edges"]
    if not chosen:
        G.graph["warning"] = _nothing_selected(rule, value, rows)
    return G


def circuit_from_edges(
    edges: Mapping[Any, Mapping[str, Any]] | Iterable[Edge | str],
    *,
    node_attrs: Mapping[Any, Mapping[str, Any]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    heads_per_kv: int | None = None,
) -> nx.DiGraph:
    """The circuit made of given edges: internal edges added, off-path parts dropped.

    ``edges`` maps each edge (or id) to its attributes (see :func:`edge_attributes`), or is
    a plain list of edges (then only ``target_input`` and ``internal`` are set).
    ``node_attrs`` adds attributes to nodes that survive. :func:`build_circuit` is this
    after selection; importers (MIB JSON) use it directly.

    Example:
        >>> G = circuit_from_edges(["input->a1.h0<v>", "a1.h0->logits", "input->m0"])
        >>> sorted(G.nodes)
        ['a1.h0', 'a1.h0<v>', 'input', 'logits']
        >>> G.graph["n_edges"]
        2
    """
    scored = _edge_map(edges)
    structure = nx.DiGraph()
    for e in scored:
        _check_edge(e)
        structure.add_edge(e.src, e.dst)
    internal = _internal_edges(list(structure.nodes), heads_per_kv)
    structure.add_edges_from(internal)
    kept_nodes, kept_edges = _on_paths(structure)
    extras = _keyed(node_attrs, Node.parse)
    G = nx.DiGraph()
    G.graph.update(_plain(dict(attrs or {}), "attrs"))
    for n in sorted(kept_nodes, key=lambda n: n.sort_key):
        G.add_node(n.id, **node_attributes(n), **_plain(dict(extras.get(n, {})), n.id))
    for u, v in sorted(kept_edges, key=lambda uv: (uv[0].sort_key, uv[1].sort_key)):
        e = Edge(u, v)
        data = scored.get(e, {"internal": True})
        G.add_edge(u.id, v.id, **_plain(dict(data), e.id))
    G.graph["n_edges"] = sum(1 for *_, d in G.edges(data=True) if not d.get("internal"))
    G.graph["n_nodes"] = G.number_of_nodes()
    if scored and not G.number_of_edges():
        G.graph["warning"] = (
            f"none of the {len(scored)} selected edges lies on an input -> logits path, so the "
            "circuit is empty; select more edges or lower the threshold"
        )
    return G


def path_growth(
    edges: Sequence[Edge | str], heads_per_kv: int | None = None
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """When each node and edge joins the circuit as the ranked ``edges`` are added one by one.

    The circuit of the top k edges is :func:`circuit_from_edges` of ``edges[:k]``: its
    internal edges added, what lies on no ``input`` → ``logits`` path dropped. Adding edges
    never removes a path, so each node and edge (internal ones included) appears at one size
    and stays: this returns that smallest k for every node id and every ``(u, v)`` id pair
    that appears at all. Reachability grows incrementally, so the cost is linear in the edges
    (what the HTML viewer's size slider walks).

    Example:
        >>> nodes, grown = path_growth(["input->a0.h0<q>", "input->logits", "a0.h0->logits"])
        >>> grown[("input", "logits")], grown[("a0.h0<q>", "a0.h0")], nodes["a0.h0"]
        (2, 3, 3)
    """
    ranked = [_as_edge(e) for e in edges]
    appear: dict[Node, int] = {}
    for k, e in enumerate(ranked, 1):
        _check_edge(e)
        appear.setdefault(e.src, k)
        appear.setdefault(e.dst, k)
    internal = _internal_edges(list(appear), heads_per_kv)
    added = [(k, e.src, e.dst) for k, e in enumerate(ranked, 1)]
    added += [(max(appear[t], appear[s]), t, s) for t, s in internal]
    added.sort(key=lambda x: x[0])  # stable: scored edges keep their rank order
    grown = _Growth()
    for k, u, v in added:
        grown.add(k, u, v)
    node_at: dict[str, int] = {}
    for (u, v), k in grown.at.items():
        for n in (u, v):
            node_at[n.id] = min(k, node_at.get(n.id, k))
    return node_at, {(u.id, v.id): k for (u, v), k in grown.at.items()}


class _Growth:
    """Forward (from ``input``) and backward (to ``logits``) reachability, grown edge by edge."""

    def __init__(self) -> None:
        self.succ: dict[Node, list[Node]] = defaultdict(list)
        self.pred: dict[Node, list[Node]] = defaultdict(list)
        self.fwd: set[Node] = set()
        self.bwd: set[Node] = set()
        self.at: dict[tuple[Node, Node], int] = {}  # edge -> the size at which it is on a path

    def add(self, k: int, u: Node, v: Node) -> None:
        self.succ[u].append(v)
        self.pred[v].append(u)
        if u.kind == "input":
            self._forward(u, k)
        if u in self.fwd:
            self._forward(v, k)
        if v.kind == "logits":
            self._backward(v, k)
        if v in self.bwd:
            self._backward(u, k)
        if u in self.fwd and v in self.bwd:
            self.at.setdefault((u, v), k)

    def _forward(self, start: Node, k: int) -> None:
        """``start`` and all it reaches join the forward set; edges into the backward set count."""
        if start in self.fwd:
            return
        self.fwd.add(start)
        stack = [start]
        while stack:
            x = stack.pop()
            for y in self.succ[x]:
                if y in self.bwd:
                    self.at.setdefault((x, y), k)
                if y not in self.fwd:
                    self.fwd.add(y)
                    stack.append(y)

    def _backward(self, start: Node, k: int) -> None:
        """``start`` and all that reaches it join the backward set; edges from the forward set count."""
        if start in self.bwd:
            return
        self.bwd.add(start)
        stack = [start]
        while stack:
            x = stack.pop()
            for w in self.pred[x]:
                if w in self.fwd:
                    self.at.setdefault((w, x), k)
                if w not in self.bwd:
                    self.bwd.add(w)
                    stack.append(w)


def node_attributes(node: Node) -> dict[str, Any]:
    """The attributes every circuit node carries, derived from its id.

    Example:
        >>> node_attributes(Node.parse("a3.kv1<k>@2"))
        {'kind': 'k', 'layer': 3, 'position': 2, 'head': 1, 'grouped': True}
    """
    end = node.kind in ("input", "logits")
    out: dict[str, Any] = {
        "kind": node.kind,
        "layer": None if end else node.layer,
        "position": node.position,
    }
    if node.kind in ("head", "q", "k", "v"):
        out["head"] = node.index
        out["grouped"] = node.grouped
    elif node.kind == "neuron":
        out["neuron"] = node.index
    return out


def edge_attributes(
    edge: Edge, signed: float | None, score: float | None, exact: float | None = None
) -> dict[str, Any]:
    """The attributes of a scored (non-internal) circuit edge.

    Example:
        >>> edge_attributes(Edge.parse("a0.h1->a3.h5<k>"), -0.5, 0.5)
        {'target_input': 'k', 'internal': False, 'score': 0.5, 'signed': -0.5}
    """
    out: dict[str, Any] = {"target_input": edge.dst.kind, "internal": False}
    if score is not None:
        out["score"] = float(score)
    if signed is not None:
        out["signed"] = float(signed)
    if exact is not None:
        out["exact"], out["verified"] = float(exact), True
    return out


def model_attrs(info: ModelInfo) -> dict[str, Any]:
    """Graph attributes that describe the model (what MIB export and GQA edges need).

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> a = model_attrs(ModelInfo("m", 2, 4, 2, 32, 8, 64, "RMS", True, True, False, 50, 32))
        >>> a["n_heads"], a["n_kv_heads"], a["heads_per_kv"]
        (4, 2, 2)
    """
    return {
        "model": info.name,
        "n_layers": info.n_layers,
        "n_heads": info.n_heads,
        "n_kv_heads": info.n_kv_heads,
        "heads_per_kv": info.heads_per_kv,
        "d_model": info.d_model,
        "parallel_attn_mlp": info.parallel_blocks,
    }


# --------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------


def _selection(top_n: Any, threshold: Any, greedy: Any, target: Any) -> tuple[str, Any]:
    rules = (("top_n", top_n), ("threshold", threshold), ("greedy", greedy), ("target", target))
    given = {k: v for k, v in rules if v is not None}
    if len(given) != 1:
        got = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "none"
        raise ConfigError(
            "expected exactly one of top_n, threshold, greedy or target to select edges but "
            f"got {got}; pass one of them"
        )
    rule, value = next(iter(given.items()))
    if rule == "target":
        check_target(value, 1)
        return rule, float(value)
    if rule == "threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"expected a number for threshold but got {value!r}")
        return rule, float(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"expected a whole number >= 0 for {rule} but got {value!r}")
    return rule, value


def _fixed(rule: str, value: Any, rows: list[_Row], hpk: int | None) -> list[_Row]:
    """The edges a fixed rule selects (``top_n``, ``threshold`` or ``greedy``)."""
    if rule == "top_n":
        return rows[: int(value)]
    if rule == "threshold":
        return [r for r in rows if r.score >= value]
    return _greedy(rows, int(value), hpk)


def _needed(faithfulness: Faithfulness | None) -> Faithfulness:
    if faithfulness is None:
        raise ConfigError(
            "expected faithfulness=, a function from circuits (lists of edges) to their "
            "faithfulness, with target=; e.g. the F of evaluate_circuits on your pairs"
        )
    return faithfulness


def _rows(es: EdgeScores) -> list[_Row]:
    """Valid edges with their scores, in ranking order (as ``EdgeScores.ranking``: highest
    score first, ties in source-major order; a stable sort keeps that order)."""
    cells = es.valid.nonzero()
    score = es.score[es.valid].double()
    bad = int(score.isnan().sum())
    if bad:
        raise ConfigError(
            f"expected finite edge scores but {bad} valid edges score NaN; recompute the "
            "scores or mark those edges invalid"
        )
    order = torch.sort(-score, stable=True).indices
    ij = cells[order].tolist()
    signed = es.signed[es.valid][order].tolist()
    return [
        _Row(Edge(es.sources[i], es.targets[j]), s, a)
        for (i, j), s, a in zip(ij, signed, score[order].tolist(), strict=True)
    ]


def _greedy(rows: Sequence[_Row], n: int, heads_per_kv: int | None) -> list[_Row]:
    """n edges grown from the logits: always the best edge into a node already in."""
    by_target: dict[Node, list[tuple[int, _Row]]] = defaultdict(list)
    for rank, r in enumerate(rows):
        by_target[r.edge.dst].append((rank, r))
    outputs = _Outputs({r.edge.src for r in rows}, heads_per_kv)
    opens: dict[Node, list[Node]] = defaultdict(list)  # source -> targets it makes reachable
    for t in by_target:
        for s in outputs.of(t):
            opens[s].append(t)
    heap: list[tuple[int, _Row]] = []
    active: set[Node] = set()

    def activate(t: Node) -> None:
        if t not in active:
            active.add(t)
            for item in by_target[t]:
                heapq.heappush(heap, item)

    for t in by_target:
        if t.kind == "logits":
            activate(t)
    inside: set[Node] = set()
    chosen: list[_Row] = []
    while heap and len(chosen) < n:
        _, r = heapq.heappop(heap)
        chosen.append(r)
        if r.edge.src not in inside:
            inside.add(r.edge.src)
            for t in opens[r.edge.src]:
                activate(t)
    return chosen


def _nothing_selected(rule: str, value: Any, rows: Sequence[_Row]) -> str:
    if not rows:
        return "the edge scores hold no valid edge, so the circuit is empty"
    if rule == "threshold":
        return (
            f"no edge scores >= {value} (the largest score is {rows[0].score:.4g}), so the "
            "circuit is empty; lower the threshold"
        )
    return f"{rule}={value} selects no edge, so the circuit is empty; ask for more edges"


# --------------------------------------------------------------------------------------
# Target search and path completion
# --------------------------------------------------------------------------------------


def _ranked(rows: Sequence[_Row], rank_by: str, direction: float | None) -> list[_Row]:
    """The rows in the order the target search walks (stable: ties keep |score| order)."""
    if rank_by == "score":
        return list(rows)
    if rank_by != "signed":
        raise ConfigError(f"expected rank_by 'signed' or 'score' but got {rank_by!r}")
    if direction is None:  # Σ signed estimates the effect of patching everything
        direction = math.copysign(1.0, sum(r.signed for r in rows) or -1.0)
    sign = math.copysign(1.0, direction)
    return sorted(rows, key=lambda r: -sign * r.signed)


def _search(
    ranked: Sequence[_Row], pool: _Pool, faithfulness: Faithfulness, target: float, max_edges: int
) -> Search:
    """The target search over prefixes of ``ranked``, each completed into paths."""
    kept: dict[int, list[Edge]] = {}

    def circuit(k: int) -> list[Edge]:
        if k not in kept:
            chosen, added = pool.complete(ranked[:k])
            kept[k] = pool.on_paths([r.edge for r in (*chosen, *added)])
        return kept[k]

    def evaluate(ks: Sequence[int]) -> list[float]:
        return [float(f) for f in faithfulness([circuit(k) for k in ks])]

    return search_prefix(len(ranked), lambda k: len(circuit(k)), evaluate, target, max_edges)


class _Pool:
    """Every scored edge, with the widest path from ``input`` to each node and from each
    node to ``logits`` (widest: the weakest |score| on it is largest; internal edges are
    never the weakest)."""

    def __init__(self, rows: Sequence[_Row], heads_per_kv: int | None) -> None:
        self.row = {r.edge: r for r in rows}
        nodes = sorted(
            {n for r in rows for n in (r.edge.src, r.edge.dst)}, key=lambda n: n.sort_key
        )
        self.internal = _internal_edges(nodes, heads_per_kv)
        weighted = [(r.edge.src, r.edge.dst, r.score) for r in rows]
        weighted += [(t, s, math.inf) for t, s in self.internal]
        succ: dict[Node, list[tuple[Node, float]]] = defaultdict(list)
        pred: dict[Node, list[tuple[Node, float]]] = defaultdict(list)
        for u, v, w in weighted:
            succ[u].append((v, w))
            pred[v].append((u, w))
        self.from_input = _widest([n for n in nodes if n.kind == "input"], succ)
        self.to_logits = _widest([n for n in nodes if n.kind == "logits"], pred)

    def complete(self, chosen: Sequence[_Row]) -> tuple[list[_Row], list[_Row]]:
        """``chosen`` and the scored edges that complete its edges' paths (not in ``chosen``)."""
        grown = _Growth()
        for t, s in self.internal:
            grown.add(0, t, s)
        for r in chosen:
            grown.add(0, r.edge.src, r.edge.dst)
        have = {r.edge for r in chosen}
        added: list[_Row] = []

        def add(path: list[Edge]) -> None:
            for e in path:
                grown.add(0, e.src, e.dst)
                if e in self.row and e not in have:
                    have.add(e)
                    added.append(self.row[e])

        for u in sorted({r.edge.src for r in chosen}, key=lambda n: n.sort_key):
            if u not in grown.fwd:  # lowest layers first: their paths may reach the rest
                add(_path(self.from_input, u, forward=True))
        for v in sorted({r.edge.dst for r in chosen}, key=lambda n: n.sort_key, reverse=True):
            if v not in grown.bwd:
                add(_path(self.to_logits, v, forward=False))
        return list(chosen), added

    def on_paths(self, edges: Sequence[Edge]) -> list[Edge]:
        """The scored edges among ``edges`` that lie on an input -> logits path."""
        g = nx.DiGraph()
        g.add_edges_from((e.src, e.dst) for e in edges)
        present = set(g.nodes)
        g.add_edges_from((t, s) for t, s in self.internal if t in present and s in present)
        _, on = _on_paths(g)
        keep = set(on)
        return [e for e in edges if (e.src, e.dst) in keep]


def _widest(
    starts: Sequence[Node], step: Mapping[Node, Sequence[tuple[Node, float]]]
) -> dict[Node, Node | None]:
    """Max-bottleneck tree from ``starts`` along ``step``: each reached node's predecessor."""
    best = {n: math.inf for n in starts}
    back: dict[Node, Node | None] = {n: None for n in starts}
    heap = [(-math.inf, n.sort_key, n) for n in starts]
    done: set[Node] = set()
    while heap:
        _, _, x = heapq.heappop(heap)
        if x in done:
            continue
        done.add(x)
        for y, w in step.get(x, ()):
            width = min(best[x], w)
            if y not in done and width > best.get(y, -math.inf):
                best[y], back[y] = width, x
                heapq.heappush(heap, (-width, y.sort_key, y))
    return back


def _path(tree: Mapping[Node, Node | None], node: Node, *, forward: bool) -> list[Edge]:
    """The edges from the tree's root to ``node`` (``forward``) or from ``node`` to the root."""
    out: list[Edge] = []
    x = node
    while tree.get(x) is not None:
        y = tree[x]
        assert y is not None
        out.append(Edge(y, x) if forward else Edge(x, y))
        x = y
    return out


# --------------------------------------------------------------------------------------
# Internal edges and pruning
# --------------------------------------------------------------------------------------


class _Outputs:
    """Which output nodes (among ``nodes``) a target input node feeds."""

    def __init__(self, nodes: Iterable[Node], heads_per_kv: int | None) -> None:
        self.heads_per_kv = heads_per_kv
        self.index: dict[tuple[str, int, int | None], list[Node]] = defaultdict(list)
        for n in nodes:
            if n.kind == "head":
                self.index[("head", n.layer, n.index)].append(n)
            elif n.kind in ("mlp", "neuron"):
                self.index[(n.kind, n.layer, None)].append(n)

    def of(self, target: Node) -> list[Node]:
        """Output nodes fed by ``target`` (an MLP input feeds its own node ``m2`` too)."""
        k, layer = target.kind, target.layer
        keys: list[tuple[str, int, int | None]]
        if k in ("q", "k", "v"):
            keys = [("head", layer, h) for h in self._heads(target)]
        elif k == "mlp":
            keys = [("mlp", layer, None), ("neuron", layer, None)]
        else:
            return []
        return [n for key in keys for n in self.index.get(key, []) if _feeds(target, n)]

    def _heads(self, target: Node) -> range:
        assert target.index is not None
        if not target.grouped:
            return range(target.index, target.index + 1)
        r = self.heads_per_kv
        if r is None:
            raise ConfigError(
                f"the grouped KV node {target.id} needs the number of query heads per KV head "
                "but got none; pass attrs=model_attrs(info) or attrs={'heads_per_kv': ...}"
            )
        return range(target.index * r, (target.index + 1) * r)


def _feeds(target: Node, output: Node) -> bool:
    """Position rule: q and MLP inputs feed the same position, k/v every later one."""
    s, t = target.position, output.position
    if s is None or t is None:
        return True
    return t >= s if target.kind in ("k", "v") else t == s


def _internal_edges(nodes: Sequence[Node], heads_per_kv: int | None) -> list[tuple[Node, Node]]:
    outputs = _Outputs(nodes, heads_per_kv)
    return [(t, s) for t in nodes for s in outputs.of(t) if s != t]


def _on_paths(g: nx.DiGraph) -> tuple[set[Node], list[tuple[Node, Node]]]:
    """Nodes and edges on some input -> logits path."""
    starts = [n for n in g if n.kind == "input"]
    ends = [n for n in g if n.kind == "logits"]
    fwd = set(starts).union(*(nx.descendants(g, n) for n in starts))
    bwd = set(ends).union(*(nx.ancestors(g, n) for n in ends))
    edges = [(u, v) for u, v in g.edges if u in fwd and v in bwd]
    return {n for e in edges for n in e}, edges


def _check_edge(e: Edge) -> None:
    if e.src.kind not in SOURCE_KINDS or e.dst.kind not in TARGET_KINDS:
        raise ConfigError(
            f"expected edges from {list(SOURCE_KINDS)} to {list(TARGET_KINDS)} nodes but got "
            f"{e.id}; an edge ends at a head's q/k/v input, an MLP or the logits"
        )


# --------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------


def _score_attrs(es: EdgeScores, ns: NodeScores | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "edge_method": es.method,
        "metric": es.metric,
        "n_pairs": es.n_pairs,
        "ranked_by": "score",
    }
    if ns is not None:
        out["node_method"] = ns.method
        out["node_metric"] = ns.metric
    return out


def _node_extras(
    ns: NodeScores | None, verified: Mapping[Node, float]
) -> dict[Node, dict[str, Any]]:
    out: dict[Node, dict[str, Any]] = defaultdict(dict)
    if ns is not None:
        for n, s, a in zip(ns.nodes, ns.signed.tolist(), ns.score.tolist(), strict=True):
            out[n].update(score=float(a), signed=float(s))
    for n, x in verified.items():
        out[n].update(exact=float(x), verified=True)
    return out


def _heads_per_kv(*sources: Mapping[str, Any]) -> int | None:
    for src in sources:
        if src.get("heads_per_kv"):
            return int(src["heads_per_kv"])
        if src.get("n_heads") and src.get("n_kv_heads"):
            return int(src["n_heads"]) // int(src["n_kv_heads"])
    return None


def _edge_map(
    edges: Mapping[Any, Mapping[str, Any]] | Iterable[Edge | str],
) -> dict[Edge, dict[str, Any]]:
    if isinstance(edges, Mapping):
        items = [(_as_edge(e), dict(d)) for e, d in edges.items()]
    else:
        items = [(e, edge_attributes(e, None, None)) for e in map(_as_edge, edges)]
    return dict(items)


def _as_edge(e: Edge | str) -> Edge:
    return Edge.parse(e) if isinstance(e, str) else e


def _keyed(mapping: Mapping[Any, Any] | None, parse: Any) -> dict[Any, Any]:
    """A mapping keyed by Node/Edge objects (string ids parsed)."""
    return {parse(k) if isinstance(k, str) else k: v for k, v in (mapping or {}).items()}


def _plain(value: Any, where: str) -> Any:
    """JSON-like copy: tuples become lists, tensor/numpy scalars Python numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"expected string keys in {where} but got {bad[0]!r}")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist(), where)
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
        return _plain(value.item(), where)
    raise ConfigError(
        f"expected JSON-like values (numbers, strings, lists, dicts) in {where} but got a "
        f"{type(value).__name__}; convert it first"
    )


def circuit_edges(circuit: nx.DiGraph) -> list[Edge]:
    """The scored (non-internal) edges of a circuit graph.

    Example:
        >>> import networkx as nx
        >>> g = nx.DiGraph(); g.add_edge("input", "a0.h1<q>", internal=False)
        >>> [e.id for e in circuit_edges(g)]
        ['input->a0.h1<q>']
    """
    return [
        Edge.parse(f"{u}->{v}") for u, v, d in circuit.edges(data=True) if not d.get("internal")
    ]
