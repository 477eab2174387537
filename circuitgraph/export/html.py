"""``circuit.html``: an interactive, self-contained viewer of a circuit.

One HTML file with everything inlined — the vendored cytoscape.js (``assets/``, MIT), the
viewer's own script and style, and the circuit as JSON — so it opens from disk with no
network. It shows the circuit like the DOT picture (one row per layer's q/k/v inputs, heads,
MLP and neurons; nodes coloured by kind; edge width by |score|, blue for a positive signed
score and red for a negative one; internal edges grey and dashed) with pan and zoom, hover
tooltips (estimate, exact effect where verified, rank), click-to-highlight of a node's in-
and out-edges, a search box for node ids, and a slider over circuit size.

**What the slider walks.** The ranked edge list: with ``scores=`` (discover passes its
:class:`~circuitgraph.scores.EdgeScores`) every attributed edge by absolute score, as
:meth:`~circuitgraph.scores.EdgeScores.ranking` orders them; without, the circuit's own
scored edges by ``score``. At size k the viewer shows the circuit of the top k edges pruned
to input → logits paths exactly as :func:`~circuitgraph.graph.build_circuit` prunes it.
That is precomputed here, not in the browser: :func:`~circuitgraph.graph.path_growth` gives
each node and edge the size at which it joins (it then stays), so the page only shows the
elements whose size is at most k. Beside the slider the faithfulness curve
``G.graph["faithfulness_curve"]`` (measured by the pipeline on the same ranking) is drawn with
the current size marked, and MIB's curves and CPR/CMD when ``G.graph["mib"]`` holds them.

Example:
    >>> from circuitgraph.graph import circuit_from_edges
    >>> page = to_html(circuit_from_edges(["input->a0.h0<q>", "a0.h0->logits"]))
    >>> page.startswith("<!DOCTYPE html>"), "cytoscape" in page
    (True, True)
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from circuitgraph.errors import ExportError
from circuitgraph.export.draw import EDGE_COLORS, NODE_COLORS
from circuitgraph.export.files import PathLike, atomic_write, finite_json
from circuitgraph.faithfulness import gap_warning
from circuitgraph.graph import path_growth
from circuitgraph.nodes import Edge, Node

if TYPE_CHECKING:
    from circuitgraph.scores import EdgeScores, NodeScores

__all__ = ["CYTOSCAPE_VERSION", "MAX_EDGES", "to_html", "viewer_data", "write_html"]

#: the vendored cytoscape.js (``assets/cytoscape.min.js``)
CYTOSCAPE_VERSION = "3.35.0"
#: the slider walks at most this many ranked edges (the page stays light and quick)
MAX_EDGES = 5000

_ROW_GAP = {"qkv": 55.0, "head": 70.0, "mlp": 85.0, "neuron": 70.0, "end": 85.0}
_HEAD_DX, _QKV_DX, _BOX_DX = 140.0, 40.0, 100.0


def to_html(
    G: nx.DiGraph,
    *,
    scores: EdgeScores | None = None,
    node_scores: NodeScores | None = None,
    verified: Mapping[str, float] | None = None,
    title: str | None = None,
    max_edges: int = MAX_EDGES,
) -> str:
    """The viewer page of circuit ``G`` as one self-contained HTML string.

    ``scores`` makes the slider walk every attributed edge (else the circuit's own edges);
    ``node_scores`` and ``verified`` (node id → exact effect) describe nodes that join at
    sizes beyond the circuit's; ``max_edges`` caps the ranked list the page carries.

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> "circuit-data" in to_html(circuit_from_edges(["input->logits"]), title="demo")
        True
    """
    data = viewer_data(G, scores, node_scores, verified, title, max_edges)
    page = _asset("viewer.html")
    for marker, value in (
        ("@TITLE@", html.escape(data["meta"]["title"])),  # in <title> and <h1>
        ("@TITLE@", html.escape(data["meta"]["title"])),
        ("/*@CSS@*/", _asset("viewer.css")),
        ("@DATA@", _json_for_script(data)),
        ("/*@VIEWER@*/", _asset("viewer.js")),
        ("/*@CYTOSCAPE@*/", _asset("cytoscape.min.js")),  # last: its text is not searched
    ):
        page = page.replace(marker, value, 1)
    return page


def write_html(G: nx.DiGraph, path: PathLike, **kwargs: Any) -> Path:
    """Write :func:`to_html` of ``G`` to ``path`` (atomically).

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> write_html(circuit_from_edges(["input->logits"]), pathlib.Path(tempfile.mkdtemp()) / "c.html").suffix
        '.html'
    """
    return atomic_write(path, to_html(G, **kwargs))


def viewer_data(
    G: nx.DiGraph,
    scores: EdgeScores | None = None,
    node_scores: NodeScores | None = None,
    verified: Mapping[str, float] | None = None,
    title: str | None = None,
    max_edges: int = MAX_EDGES,
) -> dict[str, Any]:
    """What the page draws, as JSON-ready data: ``meta``, ``nodes``, ``edges`` (each with the
    size ``k`` at which it joins), ``rows`` (layer labels), ``curve`` and ``mib``.

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> d = viewer_data(circuit_from_edges(["input->a0.h0<q>", "a0.h0->logits"]))
        >>> sorted((e["s"], e["t"], e["k"]) for e in d["edges"])
        [('a0.h0', 'logits', 2), ('a0.h0<q>', 'a0.h0', 2), ('input', 'a0.h0<q>', 2)]
    """
    if max_edges < 1:
        raise ExportError(f"expected max_edges of at least 1 but got {max_edges}")
    ranked, total = _ranked(G, scores, max_edges)
    g = G.graph
    node_at, edge_at = path_growth([e for e, _, _ in ranked], _heads_per_kv(g))
    rank = {(e.src.id, e.dst.id): (i, s, a) for i, (e, s, a) in enumerate(ranked, 1)}
    edges = [_edge_row(G, u, v, k, rank.get((u, v))) for (u, v), k in edge_at.items()]
    info = _NodeInfo(G, node_scores, verified)
    nodes = [Node.parse(n) for n in node_at]
    place, rows = _layout(nodes, [(u, v) for (u, v), _ in edge_at.items() if (u, v) not in rank])
    return {
        "meta": _meta(G, title, len(ranked), total, info.ranked_by),
        "nodes": [{**info.row(n, node_at[n.id]), **place[n.id]} for n in nodes],
        "edges": edges,
        "rows": rows,
        "curve": [[int(n), _finite(f)] for n, f in g.get("faithfulness_curve") or []],
        "mib": g.get("mib"),
        "colors": {"nodes": NODE_COLORS, "edges": EDGE_COLORS},
        "library": f"cytoscape.js {CYTOSCAPE_VERSION}",
    }


# --------------------------------------------------------------------------------------
# The ranked edges and what each element says
# --------------------------------------------------------------------------------------


def _ranked(
    G: nx.DiGraph, scores: EdgeScores | None, max_edges: int
) -> tuple[list[tuple[Edge, float, float]], int]:
    """(edge, signed, score) rows in ranking order, capped, and how many there were."""
    if scores is not None:
        order = scores.ranking()
        rows = [(e, *scores[e]) for e in order[:max_edges]]
        return rows, len(order)
    own = [
        (Edge.parse(f"{u}->{v}"), float(d.get("signed", 0.0)), float(d.get("score", 0.0)))
        for u, v, d in G.edges(data=True)
        if not d.get("internal")
    ]
    own.sort(key=lambda r: -r[2])  # stable: ties keep the file's order
    return own[:max_edges], len(own)


def _edge_row(
    G: nx.DiGraph, u: str, v: str, k: int, ranked: tuple[int, float, float] | None
) -> dict[str, Any]:
    if ranked is None:  # internal: q/k/v input -> head output, MLP -> neuron
        return {"s": u, "t": v, "k": k, "i": 1}
    r, signed, score = ranked
    exact = G.edges[u, v].get("exact") if G.has_edge(u, v) else None
    return {"s": u, "t": v, "k": k, "i": 0, "r": r, "sg": _finite(signed),
            "sc": _finite(score), "ex": _finite(exact)}  # fmt: skip


class _NodeInfo:
    """A node's scores, exact effect and rank, from the circuit, the node scores and the
    verification, whichever holds them."""

    def __init__(
        self, G: nx.DiGraph, ns: NodeScores | None, verified: Mapping[str, float] | None
    ) -> None:
        self.G = G
        self.scores: dict[str, tuple[float, float]] = {}
        self.exact = dict(verified or {})
        if ns is not None:
            self.scores = {n.id: ns[n] for n in ns.nodes}
            self.ranked_by = f"{ns.method} score"
        else:
            self.scores = {
                n: (float(d.get("signed", 0.0)), float(d["score"]))
                for n, d in G.nodes(data=True)
                if d.get("score") is not None
            }
            self.ranked_by = f"{G.graph.get('node_method') or 'node'} score (circuit nodes)"
        order = sorted(self.scores, key=lambda n: -self.scores[n][1])
        self.rank = {n: i for i, n in enumerate(order, 1)}

    def row(self, node: Node, k: int) -> dict[str, Any]:
        d = self.G.nodes[node.id] if node.id in self.G else {}
        signed, score = self.scores.get(node.id, (d.get("signed"), d.get("score")))
        exact = d.get("exact", self.exact.get(node.id))
        end = node.kind in ("input", "logits")
        return {"id": node.id, "label": _label(node), "kind": node.kind,
                "layer": None if end else node.layer, "k": k, "r": self.rank.get(node.id),
                "sg": _finite(signed), "sc": _finite(score), "ex": _finite(exact)}  # fmt: skip


def _meta(
    G: nx.DiGraph, title: str | None, n_ranked: int, total: int, node_ranked_by: str
) -> dict[str, Any]:
    g = G.graph
    head = title or " · ".join(str(g[k]) for k in ("task", "model") if g.get(k)) or "circuit"
    selection = g.get("selection") or {}
    prefix = selection.get("rule") in ("top_n", "threshold") and selection.get("selected")
    initial = min(int(prefix), n_ranked) if prefix else n_ranked
    warnings = [str(g["warning"])] if g.get("warning") else []
    if g.get("metric_clean") is not None and g.get("metric_corrupt") is not None:
        gap = gap_warning(float(g["metric_clean"]), float(g["metric_corrupt"]))
        warnings += [gap] if gap else []
    if selection.get("rule") == "greedy":
        warnings.append(
            "this circuit was grown greedily from the logits; the slider walks the ranking by "
            "|score|, whose prefixes differ from it"
        )
    elif selection.get("rule") == "target":
        warnings.append(
            "this circuit is the smallest found reaching the faithfulness target along the "
            "ranking by signed contribution, completed into paths; the slider walks the ranking "
            "by |score|, whose prefixes differ from it"
        )
    if total > n_ranked:
        warnings.append(f"the slider walks the top {n_ranked} of {total} ranked edges")
    keys = ("model", "task", "data", "metric", "edge_method", "node_method", "n_pairs")
    return {
        "title": head,
        **{k: g.get(k) for k in keys},
        "faithfulness": _finite(g.get("faithfulness")),
        "n_edges": g.get("n_edges"),
        "n_nodes": g.get("n_nodes"),
        "initial": max(initial, 1 if n_ranked else 0),
        "n_ranked": n_ranked,
        "n_ranked_total": total,
        "node_ranked_by": node_ranked_by,
        "warnings": warnings,
    }


def _label(node: Node) -> str:
    """Short node labels: q/k/v inputs say only their kind (their head is the row below)."""
    if node.kind in ("q", "k", "v"):
        text = f"{node.kind} kv{node.index}" if node.grouped else node.kind
        return text + ("" if node.position is None else f"@{node.position}")
    return node.id


# --------------------------------------------------------------------------------------
# Layout: one row per layer's q/k/v inputs, heads, MLP and neurons
# --------------------------------------------------------------------------------------


def _row_key(node: Node) -> tuple[float, int]:
    layer = node.layer if node.layer is not None else 0
    return {
        "input": (-1.0, 0),
        "logits": (math.inf, 0),
        "q": (layer, 0),
        "k": (layer, 0),
        "v": (layer, 0),
        "head": (layer, 1),
        "mlp": (layer, 2),
        "neuron": (layer, 3),
    }[node.kind]


def _row_label(key: tuple[float, int]) -> str:
    layer, part = key
    if layer == -1:
        return "input"
    if math.isinf(layer):
        return "logits"
    return f"L{int(layer)} " + ("q/k/v", "heads", "MLP", "neurons")[part]


def _layout(
    nodes: Sequence[Node], internal: Sequence[tuple[str, str]]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Positions ({"x", "y"} per node id) and row labels. Heads spread evenly; each q/k/v
    input sits above the head(s) it feeds (q left, k centre, v right); other rows centred."""
    rows: dict[tuple[float, int], list[Node]] = defaultdict(list)
    for n in nodes:
        rows[_row_key(n)].append(n)
    x: dict[str, float] = {}
    for key, members in rows.items():
        if key[1] != 0 or key[0] in (-1, math.inf):
            members.sort(key=lambda n: (n.index or 0, -1 if n.position is None else n.position))
            x.update(_spread(members, _HEAD_DX if key[1] == 1 else _BOX_DX))
    feeds: dict[str, list[str]] = defaultdict(list)
    for u, v in internal:
        feeds[u].append(v)
    for key, members in rows.items():
        if key[1] == 0 and key[0] not in (-1, math.inf):
            x.update(_above_heads(members, feeds, x))
    y, out_rows, pos = 0.0, [], {}
    left = min(x.values(), default=0.0) - 90.0
    for i, key in enumerate(sorted(rows)):
        part = "end" if key[0] in (-1, math.inf) else ("qkv", "head", "mlp", "neuron")[key[1]]
        y += 0.0 if i == 0 else _ROW_GAP[part]
        out_rows.append({"label": _row_label(key), "x": left, "y": y, "row": i})
        for n in rows[key]:
            pos[n.id] = {"x": round(x[n.id], 1), "y": y, "row": i}
    return pos, out_rows


def _spread(members: Sequence[Node], dx: float) -> dict[str, float]:
    mid = (len(members) - 1) / 2
    return {n.id: (i - mid) * dx for i, n in enumerate(members)}


def _above_heads(
    members: Sequence[Node], feeds: Mapping[str, list[str]], x: Mapping[str, float]
) -> dict[str, float]:
    """q/k/v inputs at the mean x of the heads they feed, offset by kind, pushed apart."""
    offset = {"q": -_QKV_DX, "k": 0.0, "v": _QKV_DX}
    want = []
    for n in members:
        heads = [x[h] for h in feeds.get(n.id, []) if h in x]
        base = sum(heads) / len(heads) if heads else 0.0
        want.append((base + offset[n.kind], n.id))
    want.sort()
    out: dict[str, float] = {}
    last = -math.inf
    for wx, nid in want:
        last = max(wx, last + _QKV_DX)
        out[nid] = last
    return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _heads_per_kv(g: Mapping[str, Any]) -> int | None:
    if g.get("heads_per_kv"):
        return int(g["heads_per_kv"])
    if g.get("n_heads") and g.get("n_kv_heads"):
        return int(g["n_heads"]) // int(g["n_kv_heads"])
    return None


def _finite(x: Any) -> float | None:
    """JSON has no NaN or infinity: those (and None) become null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _json_for_script(data: Any) -> str:
    """Strict JSON (non-finite numbers as null, as in every file we write) that cannot end
    its <script> element early."""
    text = json.dumps(finite_json(data)[0], separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@cache
def _asset(name: str) -> str:
    return resources.files("circuitgraph.export").joinpath("assets", name).read_text("utf-8")
