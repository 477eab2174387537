"""Circuit files: one :func:`write` and one :func:`read` for every format.

The format comes from ``format=`` or the file name: ``.json`` (our circuit JSON, exact round
trip), ``.mib.json`` (the EAP-IG / MIB circuit JSON), ``.node-link.json``, ``.graphml``,
``.dot``, ``.html`` (the interactive viewer, self-contained) and ``.svg`` / ``.png`` /
``.pdf`` (drawn with Graphviz ``dot``). :func:`read`
recognises a JSON file by its content, so a circuit written by EAP-IG reads like ours.
Everything is written atomically; writers raise :class:`~circuitgraph.errors.ExportError`,
readers :class:`~circuitgraph.errors.DataError`.

Example:
    >>> import tempfile, pathlib
    >>> from circuitgraph.graph import circuit_from_edges
    >>> path = write(circuit_from_edges(["input->logits"]), pathlib.Path(tempfile.mkdtemp()) / "c.json")
    >>> list(read(path).edges)
    [('input', 'logits')]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from circuitgraph.errors import ConfigError, DataError, malformed
from circuitgraph.export.draw import render, to_dot, write_dot
from circuitgraph.export.files import PathLike, atomic_write, load_json
from circuitgraph.export.graphs import (
    SCHEMA,
    from_json,
    from_node_link,
    read_graphml,
    read_json,
    read_node_link,
    to_json,
    write_graphml,
    write_json,
    write_node_link,
)
from circuitgraph.export.html import to_html, write_html
from circuitgraph.export.mib import MIB_EXTRAS_KEY, from_mib, is_mib, read_mib, to_mib, write_mib
from circuitgraph.nodes import Node

__all__ = [
    "FORMATS",
    "MIB_EXTRAS_KEY",
    "SCHEMA",
    "SUFFIX",
    "atomic_write",
    "format_of",
    "from_document",
    "from_json",
    "from_mib",
    "read",
    "read_graphml",
    "read_json",
    "read_mib",
    "read_node_link",
    "render",
    "to_dot",
    "to_html",
    "to_json",
    "to_mib",
    "write",
    "write_dot",
    "write_graphml",
    "write_html",
    "write_json",
    "write_mib",
    "write_node_link",
]


def _drawn(fmt: str) -> Callable[..., Path]:
    def draw(G: nx.DiGraph, path: PathLike, **kwargs: Any) -> Path:
        return render(G, path, format=fmt, **kwargs)

    return draw


#: format name → writer(G, path, **kwargs)
_WRITERS: dict[str, Callable[..., Path]] = {
    "json": write_json,
    "mib": write_mib,
    "node-link": write_node_link,
    "graphml": write_graphml,
    "dot": write_dot,
    "html": write_html,
    "svg": _drawn("svg"),
    "png": _drawn("png"),
    "pdf": _drawn("pdf"),
}
#: every format :func:`write` knows
FORMATS: tuple[str, ...] = tuple(_WRITERS)
#: file-name endings, longest first, and the format each implies
_SUFFIXES = (
    (".mib.json", "mib"),
    (".node-link.json", "node-link"),
    (".nodelink.json", "node-link"),
    (".json", "json"),
    (".graphml", "graphml"),
    (".dot", "dot"),
    (".gv", "dot"),
    (".html", "html"),
    (".htm", "html"),
    (".svg", "svg"),
    (".png", "png"),
    (".pdf", "pdf"),
)
#: the file ending each format gets when a path is derived from another
SUFFIX: dict[str, str] = {
    "json": ".json",
    "mib": ".mib.json",
    "node-link": ".node-link.json",
    "graphml": ".graphml",
    "dot": ".dot",
    "html": ".html",
    "svg": ".svg",
    "png": ".png",
    "pdf": ".pdf",
}


def format_of(path: PathLike, format: str | None = None) -> str:
    """The format asked for, else the one the file name implies.

    Example:
        >>> format_of("out/circuit.mib.json"), format_of("c.txt", "dot")
        ('mib', 'dot')
    """
    if format is not None:
        if format not in _WRITERS:
            raise ConfigError(f"expected a format among {list(FORMATS)} but got {format!r}")
        return format
    name = Path(path).name.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise ConfigError(
        f"expected a file name ending in one of {[s for s, _ in _SUFFIXES]} but got {name!r}; "
        "rename the file or pass format="
    )


def write(G: nx.DiGraph, path: PathLike, format: str | None = None, **kwargs: Any) -> Path:
    """Write the circuit ``G`` to ``path`` in ``format`` (default: from the file name).

    ``kwargs`` go to the format's writer (e.g. ``scores=`` an
    :class:`~circuitgraph.scores.EdgeScores` for MIB, so that every edge of the model carries
    its score, or for HTML, so that the size slider walks every attributed edge; ``title=``
    for drawings and HTML).

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> write(circuit_from_edges(["input->logits"]), pathlib.Path(tempfile.mkdtemp()) / "c.dot").suffix
        '.dot'
    """
    return _WRITERS[format_of(path, format)](G, path, **kwargs)


def read(path: PathLike, format: str | None = None) -> nx.DiGraph:
    """Read a circuit from any format :func:`write` produces except drawings.

    A JSON file is recognised by its content: our circuit JSON, an EAP-IG / MIB circuit
    (written by EAP-IG's ``Graph.to_json`` or by us) or networkx node-link JSON.

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> cfg = {"n_layers": 1, "n_heads": 1, "d_model": 8, "parallel_attn_mlp": False}
        >>> p = write(circuit_from_edges(["input->logits"]), pathlib.Path(tempfile.mkdtemp()) / "c.mib.json", cfg=cfg)
        >>> list(read(p).edges)
        [('input', 'logits')]
    """
    fmt = format or (format_of(path) if not str(path).lower().endswith(".json") else "json")
    if fmt == "graphml":
        return _node_ids_checked(read_graphml(path), str(path))
    if fmt in ("json", "mib", "node-link"):
        data = load_json(path, "circuit")
        with malformed("circuit JSON", str(path)):
            return _node_ids_checked(from_document(data, str(path)), str(path))
    raise ConfigError(
        f"expected a circuit file (.json, .mib.json, .node-link.json or .graphml) to read but "
        f"got the {fmt} file {str(path)!r}; drawings cannot be read back"
    )


def _node_ids_checked(G: nx.DiGraph, where: str) -> nx.DiGraph:
    """Refuse a file whose nodes are not circuit nodes (``a3.h5``, ``m2``, ``logits`` ...)."""
    for n in G.nodes:
        try:
            Node.parse(n)
        except (ConfigError, TypeError, AttributeError):
            raise DataError(
                f"expected node ids such as 'a3.h5', 'm2' or 'logits' in {where} but got {n!r}; "
                "check the file"
            ) from None
    return G


def from_document(data: Any, where: str = "the document") -> nx.DiGraph:
    """A circuit from a parsed JSON document of any of our JSON formats, told apart by content.

    Example:
        >>> from_document({"schema": "circuitgraph.circuit/1", "graph": {}, "nodes": [], "edges": []}).number_of_nodes()
        0
    """
    if isinstance(data, Mapping) and data.get("schema") == SCHEMA:
        return from_json(data)
    if is_mib(data):
        return from_mib(data)
    if isinstance(data, Mapping) and isinstance(data.get("nodes"), list) and "directed" in data:
        return from_node_link(data, where)
    got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
    raise DataError(
        f"expected a circuit JSON in {where} (circuitgraph's schema {SCHEMA!r}, an EAP-IG/MIB "
        f"circuit with 'cfg', 'nodes' and 'edges', or node-link JSON) but got {got!r}; write it "
        "with circuitgraph.write or EAP-IG's Graph.to_json"
    )
