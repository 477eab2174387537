"""Pictures of a circuit: DOT (no program needed), and SVG/PNG/PDF through Graphviz ``dot``.

One rank per layer, colour by node kind, edge width by |score|, colour by sign, a legend.
``graphviz`` is imported when a drawing is asked for.
"""

from __future__ import annotations

import html
import itertools
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from circuitgraph.errors import ExportError, ToolMissingError
from circuitgraph.export.files import PathLike, atomic_write
from circuitgraph.text import plural

if TYPE_CHECKING:
    import graphviz

__all__ = ["EDGE_COLORS", "NODE_COLORS", "render", "to_dot", "write_dot"]


_FONT = "Helvetica"
_POSITIVE, _NEGATIVE, _INTERNAL = "#1f5fbf", "#d03030", "#9a9a9a"
_STYLE: dict[str, dict[str, str]] = {
    "input": {"fillcolor": "#d9d9d9", "shape": "box", "style": "filled,rounded,bold"},
    "logits": {"fillcolor": "#ffd966", "shape": "box", "style": "filled,rounded,bold"},
    "head": {"fillcolor": "#a9c8f0", "shape": "box", "style": "filled,rounded"},
    "q": {"fillcolor": "#f6c89f", "shape": "ellipse", "style": "filled", "fontsize": "11"},
    "k": {"fillcolor": "#f3e79b", "shape": "ellipse", "style": "filled", "fontsize": "11"},
    "v": {"fillcolor": "#d5c4ef", "shape": "ellipse", "style": "filled", "fontsize": "11"},
    "mlp": {"fillcolor": "#b6e3b0", "shape": "box", "style": "filled"},
    "neuron": {"fillcolor": "#def2c8", "shape": "box", "style": "filled"},
}
#: fill colour of each node kind (the viewer shares the DOT picture's colours)
NODE_COLORS: dict[str, str] = {kind: style["fillcolor"] for kind, style in _STYLE.items()}
#: edge colours: positive / negative signed score, internal (no score)
EDGE_COLORS: dict[str, str] = {"positive": _POSITIVE, "negative": _NEGATIVE, "internal": _INTERNAL}
_LEGEND_ROWS = (
    ("input", "input", "embeddings"),
    ("head", "a3.h5", "attention head"),
    ("q", "q", "query input"),
    ("k", "k", "key input"),
    ("v", "v", "value input"),
    ("mlp", "m2", "MLP"),
    ("neuron", "m2.n17", "MLP neuron"),
    ("logits", "logits", "logits"),
)
_INSTALL_HINT = (
    "rendering {fmt} needs the Graphviz 'dot' program, which is not on PATH; install it "
    "(apt-get install graphviz, brew install graphviz, or conda install -c conda-forge "
    "graphviz) or export DOT/JSON instead"
)


def to_dot(G: nx.DiGraph, *, title: str | None = None) -> graphviz.Digraph:
    """The circuit as a ``graphviz.Digraph`` (no ``dot`` program needed).

    Input at the top, logits at the bottom, one ``rank=same`` row per layer's heads and one
    per layer's MLP (the MLP reads the heads of its layer; neurons get a row below their
    MLP); q/k/v inputs sit between. Nodes
    are coloured by kind, edges blue (positive ``signed``) or red (negative), width
    proportional to ``score`` over the graph's largest; internal edges grey and dashed.
    Verified nodes (``exact`` set) get a double border; scored edges are solid when
    verified by exact patching, dashed when only estimated. The
    graph's label holds a title (``title`` or task · model), a summary (size, faithfulness,
    metric, method), any warning, and the legend, so every node statement is a circuit node.

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> dot = to_dot(circuit_from_edges(["input->a0.h0<q>", "a0.h0->logits"]))
        >>> dot.source.count("rank=same")
        1
    """
    import graphviz

    dot = graphviz.Digraph(name="circuit")
    dot.attr(rankdir="TB", fontname=_FONT, fontsize="16", labelloc="t", nodesep="0.3")
    top = max((d.get("score", 0.0) for *_, d in G.edges(data=True)), default=0.0)
    dot.attr(ranksep="0.45", bgcolor="white", label=_label(G, title, top))
    dot.attr("node", fontname=_FONT, fontsize="14", penwidth="1.2", margin="0.12,0.06")
    dot.attr("edge", arrowsize="0.6")
    groups = _rank_groups(G)
    for key, members in groups.items():
        with dot.subgraph() as sub:
            sub.attr(rank=_rank_kind(key))
            for n in members:
                sub.node(n, **_node_style(n, G.nodes[n]))
    for n, d in G.nodes(data=True):
        if _group_key(n, d) is None:
            dot.node(n, **_node_style(n, d))
    _chain_ranks(dot, groups)
    for u, v, d in G.edges(data=True):
        dot.edge(u, v, **_edge_style(u, v, d, top))
    return dot


def write_dot(G: nx.DiGraph, path: PathLike, *, title: str | None = None) -> Path:
    """Write the DOT source of :func:`to_dot` to ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "circuit.dot"
        >>> write_dot(circuit_from_edges(["input->logits"]), path).read_text()[:16]
        'digraph circuit '
    """
    return atomic_write(path, to_dot(G, title=title).source)


def render(
    G: nx.DiGraph, path: PathLike, format: str | None = None, *, title: str | None = None
) -> Path:
    """Draw the circuit to an SVG, PNG (150 dpi) or PDF file with Graphviz ``dot``.

    ``format`` defaults to the file's suffix. Without ``dot`` on PATH this raises a
    :class:`~circuitgraph.errors.ToolMissingError` (an ``ExportError``) that says how to
    install it; a failed write (full disk, no permission) is an ``ExportError`` too.

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> render(circuit_from_edges(["input->logits"]), "circuit.svg")  # doctest: +SKIP
        PosixPath('circuit.svg')
    """
    fmt = (format or Path(path).suffix.lstrip(".") or "svg").lower()
    if fmt not in ("svg", "png", "pdf"):
        raise ExportError(f"expected format svg, png or pdf but got {fmt!r}; pick one of those")
    if shutil.which("dot") is None:
        raise ToolMissingError(_INSTALL_HINT.format(fmt=fmt.upper()))
    import graphviz

    dot = to_dot(G, title=title)
    if fmt == "png":
        dot.attr(dpi="150")
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise ToolMissingError(_INSTALL_HINT.format(fmt=fmt.upper())) from exc
    except graphviz.CalledProcessError as exc:
        raise ExportError(
            f"Graphviz dot failed to draw the circuit ({exc.stderr!r}); write DOT instead and "
            "report the file"
        ) from exc
    return atomic_write(path, data)


def _group_key(n: str, d: Mapping[str, Any]) -> str | None:
    kind = d.get("kind")
    if kind in ("input", "logits"):
        return str(kind)
    if kind == "head":
        return f"a{d['layer']}"
    if kind in ("mlp", "neuron"):
        return f"{'m' if kind == 'mlp' else 'n'}{d['layer']}"
    return None


def _rank_kind(key: str) -> str:
    return {"input": "min", "logits": "max"}.get(key, "same")


def _rank_groups(G: nx.DiGraph) -> dict[str, list[str]]:
    """Row groups in top-to-bottom order: input, a0, m0, n0 (neurons), a1, ..., logits."""
    groups: dict[str, list[str]] = {}
    for n, d in G.nodes(data=True):
        key = _group_key(n, d)
        if key is not None:
            groups.setdefault(key, []).append(n)

    def order(key: str) -> tuple[int, int]:
        if key in ("input", "logits"):
            return (-1 if key == "input" else 10**9, 0)
        return (int(key[1:]), "amn".index(key[0]))

    return {k: groups[k] for k in sorted(groups, key=order)}


def _chain_ranks(dot: graphviz.Digraph, groups: Mapping[str, list[str]]) -> None:
    """Invisible edges that keep the rows in layer order when no real edge does."""
    firsts = [members[0] for members in groups.values()]
    for a, b in itertools.pairwise(firsts):
        dot.edge(a, b, style="invis", weight="0")


def _node_style(n: str, d: Mapping[str, Any]) -> dict[str, str]:
    kind = str(d.get("kind", "head"))
    style = dict(_STYLE.get(kind, _STYLE["head"]))
    label = n
    if kind in ("q", "k", "v"):
        label = kind if not d.get("grouped") else f"{kind} kv{d.get('head')}"
        if d.get("position") is not None:
            label += f"@{d['position']}"
    if d.get("signed") is not None:
        label += f"\\n{float(d['signed']):+.3g}"
    tip = [n] + [f"{k}={d[k]:.4g}" for k in ("signed", "score", "exact") if d.get(k) is not None]
    if _verified(d):  # a double border: its effect was measured by exact patching
        style.update(peripheries="2", penwidth="1.6")
        tip.append("(verified exactly)")
    return {**style, "label": label, "tooltip": "  ".join(tip)}


def _verified(d: Mapping[str, Any]) -> bool:
    return bool(d.get("verified")) or d.get("exact") is not None


def _edge_style(u: str, v: str, d: Mapping[str, Any], top: float) -> dict[str, str]:
    if d.get("internal"):
        return {
            "color": _INTERNAL,
            "style": "dashed",
            "penwidth": "1.2",
            "arrowhead": "none",
            "weight": "10",
        }
    score = float(d.get("score", 0.0))
    width = 0.6 + 5.4 * (score / top if top > 0 else 0.0)
    color = _NEGATIVE if float(d.get("signed", 0.0)) < 0 else _POSITIVE
    tip = [f"{u}->{v}"] + [f"{k}={d[k]:.4g}" for k in ("signed", "score", "exact") if k in d]
    if d.get("completion"):
        tip.append("(added to complete a path)")
    out = {"color": color, "penwidth": f"{width:.2f}", "tooltip": "  ".join(tip)}
    if not _verified(d):  # an estimate only: dashed, where a verified edge is solid
        out["style"] = "dashed"
    return out


def _label(G: nx.DiGraph, title: str | None, top: float) -> str:
    """The graph's HTML label: title, summary, warning and a one-row-per-topic legend."""
    a = G.graph
    head = title or " · ".join(str(a[k]) for k in ("task", "model") if a.get(k)) or "circuit"
    parts = [
        plural(a.get("n_edges", 0), "edge"),
        plural(a.get("n_nodes", G.number_of_nodes()), "node"),
    ]
    if a.get("faithfulness") is not None:
        parts.append(f"faithfulness {float(a['faithfulness']):.3g}")
    parts += [f"{k.replace('_', ' ')} {a[k]}" for k in ("metric", "edge_method") if a.get(k)]
    rows = [
        f'<FONT POINT-SIZE="18"><B>{html.escape(head)}</B></FONT>',
        html.escape(", ".join(parts)),
    ]
    if a.get("warning"):
        rows.append(f'<FONT COLOR="{_NEGATIVE}">{html.escape(str(a["warning"]))}</FONT>')
    kinds = {d.get("kind") for _, d in G.nodes(data=True)} | {"input", "logits"}
    rows += [_legend_kinds(kinds), _legend_edges(top)]
    body = "".join(f"<TR><TD>{r}</TD></TR>" for r in rows)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3">{body}</TABLE>>'


def _legend_kinds(kinds: set[Any]) -> str:
    cells = "".join(
        f'<TD BGCOLOR="{_STYLE[k]["fillcolor"]}" BORDER="1">{html.escape(name)}</TD>'
        f"<TD>{html.escape(text)}</TD>"
        for k, name, text in _LEGEND_ROWS
        if k in kinds
    )
    return (
        f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="3"><TR>{cells}</TR></TABLE>'
    )


def _legend_edges(top: float) -> str:
    arrow = "&#8212;&#8212;&#9654;"
    cells = (
        f'<TD><FONT COLOR="{_POSITIVE}"><B>{arrow}</B></FONT> positive effect</TD>'
        f'<TD><FONT COLOR="{_NEGATIVE}"><B>{arrow}</B></FONT> negative effect</TD>'
        f'<TD><FONT COLOR="{_INTERNAL}"><B>- - -</B></FONT> internal: q/k/v &#8594; head, MLP &#8594; neuron</TD>'
        "<TD>solid: exact effect measured; dashed: estimate only; double border: node verified</TD>"
        f"<TD>width &#8733; |score| (max {top:.3g})</TD>"
    )
    return (
        f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="3"><TR>{cells}</TR></TABLE>'
    )
