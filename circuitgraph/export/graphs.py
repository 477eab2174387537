"""Our circuit JSON (exact round trip), networkx node-link JSON and GraphML.

Each reads back into an equal graph: same nodes, edges and attribute dicts, floats exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from circuitgraph.errors import DataError, ExportError, malformed
from circuitgraph.export.files import PathLike, atomic_write, dumps, load_json

__all__ = [
    "SCHEMA",
    "from_json",
    "from_node_link",
    "read_graphml",
    "read_json",
    "read_node_link",
    "to_json",
    "write_graphml",
    "write_json",
    "write_node_link",
]

SCHEMA = "circuitgraph.circuit/1"


def to_json(G: nx.DiGraph) -> dict[str, Any]:
    """The circuit as a JSON-ready dict with schema ``circuitgraph.circuit/1``.

    ``{"schema", "graph": {...}, "nodes": [{"id", ...attrs}], "edges": [{"source",
    "target", ...attrs}]}`` in the graph's order; :func:`from_json` inverts it exactly.

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> d = to_json(circuit_from_edges(["input->logits"]))
        >>> d["schema"], d["edges"][0]["source"], d["edges"][0]["target_input"]
        ('circuitgraph.circuit/1', 'input', 'logits')
    """
    nodes = [_record(d, {"id": n}, n) for n, d in G.nodes(data=True)]
    edges = [_record(d, {"source": u, "target": v}, f"{u}->{v}") for u, v, d in G.edges(data=True)]
    return {"schema": SCHEMA, "graph": dict(G.graph), "nodes": nodes, "edges": edges}


def _record(attrs: Mapping[str, Any], ids: dict[str, Any], where: str) -> dict[str, Any]:
    clash = sorted(set(attrs) & set(ids))
    if clash:
        raise ExportError(
            f"expected no attribute named {clash[0]!r} on {where} (the JSON uses that key for "
            "the id); rename the attribute"
        )
    return {**ids, **attrs}


def from_json(data: Mapping[str, Any]) -> nx.DiGraph:
    """Read a :func:`to_json` dict back into the circuit graph.

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> G = circuit_from_edges(["input->logits"])
        >>> H = from_json(to_json(G))
        >>> dict(H.nodes(data=True)) == dict(G.nodes(data=True)), H.graph == G.graph
        (True, True)
    """
    if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
        raise DataError(
            f"expected a circuit JSON with schema {SCHEMA!r} but got {got!r}; write it with "
            "circuitgraph.export.write_json (or upgrade circuitgraph for newer schemas)"
        )
    G = nx.DiGraph()
    G.graph.update(data.get("graph", {}))
    for rec in data.get("nodes", []):
        attrs = dict(rec)
        G.add_node(attrs.pop("id"), **attrs)
    for rec in data.get("edges", []):
        attrs = dict(rec)
        u, v = attrs.pop("source"), attrs.pop("target")
        if u not in G or v not in G:
            raise DataError(f"expected edge {u}->{v} between listed nodes; the file is damaged")
        G.add_edge(u, v, **attrs)
    return G


def write_json(G: nx.DiGraph, path: PathLike) -> Path:
    """Write :func:`to_json` to ``path`` (atomically).

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "circuit.json"
        >>> write_json(circuit_from_edges(["input->logits"]), path).name
        'circuit.json'
    """
    return atomic_write(path, dumps(to_json(G)))


def read_json(path: PathLike) -> nx.DiGraph:
    """Read a circuit written by :func:`write_json`.

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> path = write_json(circuit_from_edges(["input->logits"]),
        ...                   pathlib.Path(tempfile.mkdtemp()) / "circuit.json")
        >>> list(read_json(path).edges)
        [('input', 'logits')]
    """
    data = load_json(path, "circuit")
    with malformed("circuit JSON", str(path)):
        return from_json(data)


# --------------------------------------------------------------------------------------
# networkx node-link JSON
# --------------------------------------------------------------------------------------


def write_node_link(G: nx.DiGraph, path: PathLike) -> Path:
    """Write networkx node-link JSON (``nodes``/``edges`` lists, graph attributes as is).

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "circuit.nodelink.json"
        >>> write_node_link(circuit_from_edges(["input->logits"]), path).name
        'circuit.nodelink.json'
    """
    try:
        data = nx.node_link_data(G, edges="edges")
    except TypeError:  # networkx < 3.4
        data = nx.node_link_data(G, link="edges")
    return atomic_write(path, dumps(data))


def read_node_link(path: PathLike) -> nx.DiGraph:
    """Read a circuit written by :func:`write_node_link`.

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> path = write_node_link(circuit_from_edges(["input->logits"]),
        ...                        pathlib.Path(tempfile.mkdtemp()) / "c.json")
        >>> list(read_node_link(path).edges)
        [('input', 'logits')]
    """
    data = load_json(path, "node-link")
    with malformed("node-link circuit JSON", str(path)):
        return from_node_link(data, str(path))


def from_node_link(data: Any, where: str = "the document") -> nx.DiGraph:
    """A circuit from parsed node-link JSON (see :func:`write_node_link`).

    Example:
        >>> from_node_link({"directed": True, "graph": {}, "nodes": [{"id": "input"}], "edges": []}).number_of_nodes()
        1
    """
    try:
        try:
            return nx.node_link_graph(data, directed=True, edges="edges")
        except TypeError:  # networkx < 3.4
            return nx.node_link_graph(data, directed=True, link="edges")
    except (KeyError, nx.NetworkXError) as exc:
        raise DataError(
            f"expected networkx node-link JSON in {where} but could not read it ({exc}); check "
            "the file"
        ) from exc


# --------------------------------------------------------------------------------------
# GraphML
# --------------------------------------------------------------------------------------

_JSON_TAG = "json:"


def _to_graphml_value(value: Any) -> Any:
    """GraphML holds only scalars: None, lists and dicts (and strings that look encoded)
    become ``"json:" + json.dumps(value)``."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and not value.startswith(_JSON_TAG):
        return value
    return _JSON_TAG + dumps(value, indent=None, annotate=False).rstrip("\n")


def _from_graphml_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_JSON_TAG):
        return json.loads(value[len(_JSON_TAG) :])
    return value


def _map_attrs(G: nx.DiGraph, fn: Any) -> nx.DiGraph:
    H = nx.DiGraph()
    H.graph.update({k: fn(v) for k, v in G.graph.items()})
    H.add_nodes_from((n, {k: fn(v) for k, v in d.items()}) for n, d in G.nodes(data=True))
    H.add_edges_from((u, v, {k: fn(x) for k, x in d.items()}) for u, v, d in G.edges(data=True))
    return H


def write_graphml(G: nx.DiGraph, path: PathLike) -> Path:
    """Write GraphML; None, lists and dicts are stored as ``json:``-tagged strings.

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "circuit.graphml"
        >>> write_graphml(circuit_from_edges(["input->logits"]), path).name
        'circuit.graphml'
    """
    text = "\n".join(nx.generate_graphml(_map_attrs(G, _to_graphml_value))) + "\n"
    return atomic_write(path, text)


def read_graphml(path: PathLike) -> nx.DiGraph:
    """Read a circuit written by :func:`write_graphml` (tagged values decoded).

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> path = write_graphml(circuit_from_edges(["input->logits"]),
        ...                      pathlib.Path(tempfile.mkdtemp()) / "c.graphml")
        >>> read_graphml(path).nodes["input"]
        {'kind': 'input', 'layer': None, 'position': None}
    """
    try:
        raw = nx.read_graphml(path, node_type=str)
    except (OSError, nx.NetworkXError, ValueError, SyntaxError) as exc:  # XML ParseError
        text = " ".join(str(exc).split())
        raise DataError(
            f"expected a GraphML file at {path} but could not read it ({text})"
        ) from exc
    for key in ("node_default", "edge_default"):  # added by networkx's reader, not ours
        if isinstance(raw.graph.get(key), dict):
            del raw.graph[key]
    with malformed("GraphML circuit", str(path)):
        return _map_attrs(raw, _from_graphml_value)
