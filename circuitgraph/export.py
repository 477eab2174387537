"""Circuit exports: our JSON, node-link JSON, GraphML, EAP-IG/MIB JSON, DOT, SVG and PNG.

Everything starts from the circuit graph of :func:`circuitgraph.graph.build_circuit` and,
where the format allows, reads back into an equal graph (same nodes, edges and attribute
dicts, floats exactly). Nothing happens at import time; ``graphviz`` is imported when a
drawing is asked for, and SVG/PNG need the Graphviz ``dot`` program. Every file is written
atomically (:func:`atomic_write`). Writers raise :class:`~circuitgraph.errors.ExportError`;
readers raise :class:`~circuitgraph.errors.DataError` for files that are not what they claim.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import networkx as nx

from circuitgraph.errors import DataError, ExportError
from circuitgraph.graph import circuit_from_edges, edge_attributes
from circuitgraph.nodes import Edge, Node

if TYPE_CHECKING:
    import graphviz

    from circuitgraph.scores import EdgeScores

__all__ = [
    "MIB_EXTRAS_KEY",
    "SCHEMA",
    "atomic_write",
    "from_json",
    "from_mib",
    "read_graphml",
    "read_json",
    "read_mib",
    "read_node_link",
    "render",
    "to_dot",
    "to_json",
    "to_mib",
    "write_dot",
    "write_graphml",
    "write_json",
    "write_mib",
    "write_node_link",
]

SCHEMA = "circuitgraph.circuit/1"
#: top-level key of a MIB file under which our own JSON rides along (EAP-IG ignores it)
MIB_EXTRAS_KEY = "circuitgraph"
PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------


def atomic_write(path: PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` all at once: a temp file in the same folder, then rename.

    A failure leaves the old file (or none) and no temp file behind. Text is UTF-8.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "x.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise ExportError(
            f"expected an existing folder to write {target} into but {target.parent} does not "
            "exist; create it first"
        )
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ExportError(
                f"could not write {target}: {exc.strerror or exc}; check the path, its "
                "permissions and the free disk space"
            ) from exc
        raise
    return target


def _file_mode(target: Path) -> int:
    """Keep an existing file's mode; a new file gets the usual 0o666 minus the umask."""
    with contextlib.suppress(OSError):
        return target.stat().st_mode & 0o7777
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read from /proc where possible (os.umask must set it to read it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(x for x in status if x.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _read_text(path: PathLike, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"expected a readable {what} file at {path} but got: {exc.strerror or exc}; "
            "check the path"
        ) from exc


def _load_json(path: PathLike, what: str) -> Any:
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"expected a {what} JSON file at {path} but it is not valid JSON ({exc.msg} at "
            f"line {exc.lineno}); check the file"
        ) from exc


def _dumps(data: Any, indent: int | None = 1) -> str:
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ExportError(
            f"expected JSON-like attribute values (numbers, strings, lists, dicts) but got: "
            f"{exc}; convert that attribute first"
        ) from exc


# --------------------------------------------------------------------------------------
# Our JSON
# --------------------------------------------------------------------------------------


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
    return atomic_write(path, _dumps(to_json(G)))


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
    return from_json(_load_json(path, "circuit"))


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
    return atomic_write(path, _dumps(data))


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
    data = _load_json(path, "node-link")
    try:
        try:
            return nx.node_link_graph(data, directed=True, edges="edges")
        except TypeError:  # networkx < 3.4
            return nx.node_link_graph(data, directed=True, link="edges")
    except (KeyError, nx.NetworkXError) as exc:
        raise DataError(
            f"expected networkx node-link JSON at {path} but could not read it ({exc}); check "
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
    return _JSON_TAG + _dumps(value, indent=None).rstrip("\n")


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
    except (OSError, nx.NetworkXError, ValueError) as exc:
        raise DataError(f"expected a GraphML file at {path} but could not read it ({exc})") from exc
    for key in ("node_default", "edge_default"):  # added by networkx's reader, not ours
        if isinstance(raw.graph.get(key), dict):
            del raw.graph[key]
    return _map_attrs(raw, _from_graphml_value)


# --------------------------------------------------------------------------------------
# EAP-IG / MIB circuit JSON
# --------------------------------------------------------------------------------------

MIBScore = Literal["signed", "score"]
GQA = Literal["error", "expand"]


def to_mib(
    G: nx.DiGraph,
    cfg: Mapping[str, Any] | None = None,
    *,
    scores: EdgeScores | None = None,
    complete: bool = True,
    value: MIBScore = "signed",
    gqa: GQA = "error",
    extras: bool = True,
) -> dict[str, Any]:
    """The circuit in the JSON format of EAP-IG's ``Graph.to_json`` (the MIB circuit track).

    That format is ``{"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"},
    "nodes": {"input" | "a3.h5" | "m2" | "logits": {"in_graph": bool[, "score"]}},
    "edges": {"a0.h1->a3.h5<q>" | "a3.h5->m4" | "m4->logits": {"score": float, "in_graph":
    bool}}}``; its node and edge names are our ids, heads' q/k/v inputs appearing only as
    the ``<q>``/``<k>``/``<v>`` suffix of an edge's target. The mapping:

    * ``cfg`` comes from the argument or from ``G.graph`` (:func:`~circuitgraph.graph.model_attrs`
      puts the four keys there).
    * ``complete=True`` lists every node and edge of the full model (in EAP-IG's order), as
      EAP-IG writes it; edges outside the circuit get ``in_graph: false`` and their score
      from ``scores`` (an :class:`~circuitgraph.scores.EdgeScores`) or 0.0.
      ``complete=False`` lists only the circuit (EAP-IG's loader accepts that too).
    * An edge's ``score`` is our ``signed`` (EAP-IG scores are signed and ranked by absolute
      value) or, with ``value="score"``, our absolute ranking score (use that for GradDrop
      scores, whose ranking is not ``|signed|``). A node's ``score`` is its ``signed``
      where the circuit has one.
    * Internal edges and q/k/v nodes have no counterpart and are not written.
    * Per-position nodes (``@t``) and neurons (``m2.n17``) do not exist in the format:
      refused with an :class:`~circuitgraph.errors.ExportError`. Grouped KV inputs
      (``a3.kv1<k>``) are refused too unless ``gqa="expand"``: then the edge becomes one
      edge into ``<k>`` of each query head of the group (all in the circuit), its score split
      evenly among them (exact for membership, an even share for the score).
    * ``extras=True`` adds our own JSON (:func:`to_json`) under the top-level key
      ``"circuitgraph"``, which EAP-IG's loader ignores; :func:`from_mib` then restores every
      attribute exactly. Pass ``extras=False`` for a file with EAP-IG's keys only (e.g. for
      a leaderboard checker stricter than EAP-IG's loader).

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> G = circuit_from_edges(["input->a0.h1<q>", "a0.h1->logits"])
        >>> cfg = {"n_layers": 1, "n_heads": 2, "d_model": 8, "parallel_attn_mlp": False}
        >>> d = to_mib(G, cfg, extras=False)
        >>> d["edges"]["input->a0.h1<q>"]["in_graph"], d["edges"]["input->m0"]["in_graph"]
        (True, False)
        >>> len(d["edges"]), d["nodes"]["a0.h1"], d["nodes"]["a0.h0"]
        (13, {'in_graph': True}, {'in_graph': False})
    """
    mcfg = _mib_cfg(G, cfg)
    hpk = _mib_heads_per_kv(G, mcfg) if gqa == "expand" else 0
    ours = _mib_edges_of_graph(G, value, gqa, hpk)
    if complete:
        known = dict(_mib_edges_of_scores(scores, value, gqa, hpk)) if scores is not None else {}
        full = list(_mib_full_edges(mcfg))
        stray = sorted(set(ours) - set(full))
        if stray:
            raise ExportError(
                f"expected edges of the model described by cfg {mcfg} but the circuit has "
                f"{stray[0]}; check cfg (n_layers, n_heads, parallel_attn_mlp)"
            )
        edges = {e: {"score": ours.get(e, known.get(e, 0.0)), "in_graph": e in ours} for e in full}
        node_names = list(_mib_full_nodes(mcfg))
    else:
        edges = {e: {"score": s, "in_graph": True} for e, s in ours.items()}
        node_names = [n for n in G if Node.parse(n).kind in ("input", "head", "mlp", "logits")]
    out: dict[str, Any] = {"cfg": mcfg, "nodes": _mib_nodes(G, node_names), "edges": edges}
    if extras:
        out[MIB_EXTRAS_KEY] = to_json(G)
    return out


def from_mib(data: Mapping[str, Any]) -> nx.DiGraph:
    """Read an EAP-IG / MIB circuit JSON (see :func:`to_mib`) into a circuit graph.

    Edges with ``in_graph: true`` form the circuit (nodes follow from them; internal edges
    are added, off-path parts dropped as in :func:`~circuitgraph.graph.build_circuit`). Without our
    ``"circuitgraph"`` extras an edge's ``score`` becomes ``signed`` and its absolute value
    ``score``; ``G.graph`` gets the ``cfg`` keys and ``source_format="mib"``. When the extras
    are present and name the same scored edges, the graph they hold is returned exactly;
    otherwise they are ignored and ``G.graph["warning"]`` says so. Neuron masks
    (``"neurons"``, ``"neurons_scores"``) of neuron-level EAP-IG files are not read.

    Example:
        >>> d = {"cfg": {"n_layers": 1, "n_heads": 1, "d_model": 8, "parallel_attn_mlp": False},
        ...      "nodes": {"input": {"in_graph": True}, "logits": {"in_graph": True}},
        ...      "edges": {"input->logits": {"score": -0.5, "in_graph": True},
        ...                "input->m0": {"score": 0.1, "in_graph": False}}}
        >>> G = from_mib(d)
        >>> list(G.edges(data="signed")), G.graph["source_format"]
        ([('input', 'logits', -0.5)], 'mib')
    """
    missing = [k for k in ("cfg", "nodes", "edges") if not isinstance(data.get(k), Mapping)]
    if missing:
        raise DataError(
            f"expected an EAP-IG/MIB circuit JSON with 'cfg', 'nodes' and 'edges' objects but "
            f"{missing[0]!r} is missing; check the file"
        )
    edges = {
        Edge.parse(name): _mib_edge_attrs(Edge.parse(name), info)
        for name, info in data["edges"].items()
        if info.get("in_graph")
    }
    nodes = {
        name: {"signed": float(info["score"]), "score": abs(float(info["score"]))}
        for name, info in data["nodes"].items()
        if info.get("in_graph") and info.get("score") is not None and info["score"] == info["score"]
    }
    attrs = {**dict(data["cfg"]), "source_format": "mib"}
    G = circuit_from_edges(edges, node_attrs=nodes, attrs=attrs)
    if MIB_EXTRAS_KEY in data:
        ours = from_json(data[MIB_EXTRAS_KEY])
        if _scored_edges(ours) == _scored_edges(G):
            return ours
        G.graph["warning"] = (
            "the embedded circuitgraph attributes name other edges than the MIB in_graph "
            "flags and were ignored"
        )
    return G


def write_mib(G: nx.DiGraph, path: PathLike, **kwargs: Any) -> Path:
    """Write :func:`to_mib` (same keyword arguments) to ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> cfg = {"n_layers": 1, "n_heads": 1, "d_model": 8, "parallel_attn_mlp": False}
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "circuit.mib.json"
        >>> write_mib(circuit_from_edges(["input->logits"]), path, cfg=cfg).name
        'circuit.mib.json'
    """
    return atomic_write(path, _dumps(to_mib(G, **kwargs), indent=None))


def read_mib(path: PathLike) -> nx.DiGraph:
    """Read an EAP-IG / MIB circuit JSON file (see :func:`from_mib`).

    Example:
        >>> import tempfile, pathlib
        >>> from circuitgraph.graph import circuit_from_edges
        >>> cfg = {"n_layers": 1, "n_heads": 1, "d_model": 8, "parallel_attn_mlp": False}
        >>> path = write_mib(circuit_from_edges(["input->logits"]),
        ...                  pathlib.Path(tempfile.mkdtemp()) / "c.json", cfg=cfg)
        >>> list(read_mib(path).edges)
        [('input', 'logits')]
    """
    return from_mib(_load_json(path, "MIB circuit"))


def _mib_cfg(G: nx.DiGraph, cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    src = {**G.graph, **dict(cfg or {})}
    keys = ("n_layers", "n_heads", "parallel_attn_mlp", "d_model")
    missing = [k for k in keys if src.get(k) is None]
    if missing:
        raise ExportError(
            f"expected the model's {', '.join(keys)} for the MIB 'cfg' but {missing} are "
            "missing; pass cfg={...} or build the circuit with attrs=model_attrs(info)"
        )
    return {
        "n_layers": int(src["n_layers"]),
        "n_heads": int(src["n_heads"]),
        "parallel_attn_mlp": bool(src["parallel_attn_mlp"]),
        "d_model": int(src["d_model"]),
    }


def _mib_heads_per_kv(G: nx.DiGraph, mcfg: Mapping[str, Any]) -> int:
    if G.graph.get("heads_per_kv"):
        return int(G.graph["heads_per_kv"])
    if G.graph.get("n_kv_heads"):
        return int(mcfg["n_heads"]) // int(G.graph["n_kv_heads"])
    raise ExportError(
        "expected n_kv_heads (or heads_per_kv) in the circuit's attributes to expand grouped "
        "KV edges but got neither; build the circuit with attrs=model_attrs(info)"
    )


def _mib_names(e: Edge, gqa: str, hpk: int) -> list[str]:
    """MIB edge names for one of our edges (several for an expanded KV edge)."""
    for n in (e.src, e.dst):
        if n.position is not None or n.kind == "neuron":
            raise ExportError(
                f"expected whole-sequence head/MLP nodes for MIB JSON but got {n.id}; the "
                "format has no token positions or neurons, so build the circuit from "
                "all-position head/MLP scores"
            )
    if not e.dst.grouped:
        return [e.id]
    if gqa != "expand":
        raise ExportError(
            f"expected per-query-head edges for MIB JSON but got the grouped KV edge {e.id}; "
            "pass gqa='expand' to write one edge per query head of the group"
        )
    assert e.dst.index is not None
    heads = range(e.dst.index * hpk, (e.dst.index + 1) * hpk)
    return [f"{e.src.id}->a{e.dst.layer}.h{h}<{e.dst.kind}>" for h in heads]


def _mib_value(attrs: Mapping[str, Any], value: str) -> float:
    return float(attrs.get(value, attrs.get("signed", attrs.get("score", 0.0))))


def _mib_edges_of_graph(G: nx.DiGraph, value: str, gqa: str, hpk: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for u, v, d in G.edges(data=True):
        if d.get("internal"):
            continue
        names = _mib_names(Edge(Node.parse(u), Node.parse(v)), gqa, hpk)
        out.update({name: _mib_value(d, value) / len(names) for name in names})
    return out


def _mib_edges_of_scores(
    scores: EdgeScores, value: str, gqa: str, hpk: int
) -> Iterator[tuple[str, float]]:
    table = scores.signed if value == "signed" else scores.score
    for i, j in scores.valid.nonzero().tolist():
        e = Edge(scores.sources[i], scores.targets[j])
        names = _mib_names(e, gqa, hpk)
        for name in names:
            yield name, float(table[i, j]) / len(names)


def _mib_full_nodes(cfg: Mapping[str, Any]) -> Iterator[str]:
    yield "input"
    for layer in range(cfg["n_layers"]):
        yield from (f"a{layer}.h{h}" for h in range(cfg["n_heads"]))
        yield f"m{layer}"
    yield "logits"


def _mib_full_edges(cfg: Mapping[str, Any]) -> Iterator[str]:
    """Every edge of EAP-IG's ``Graph.from_model``, in its order."""
    resid = ["input"]
    for layer in range(cfg["n_layers"]):
        heads = [f"a{layer}.h{h}" for h in range(cfg["n_heads"])]
        mlp = f"m{layer}"
        yield from (f"{s}->{h}<{x}>" for s in resid for h in heads for x in "qkv")
        if cfg["parallel_attn_mlp"]:
            yield from (f"{s}->{mlp}" for s in resid)
            resid = [*resid, *heads]
        else:
            resid = [*resid, *heads]
            yield from (f"{s}->{mlp}" for s in resid)
        resid.append(mlp)
    yield from (f"{s}->logits" for s in resid)


def _mib_nodes(G: nx.DiGraph, names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        entry: dict[str, Any] = {"in_graph": name in G or name == "logits"}
        if name in G and G.nodes[name].get("signed") is not None:
            entry["score"] = float(G.nodes[name]["signed"])
        out[name] = entry
    return out


def _mib_edge_attrs(e: Edge, info: Mapping[str, Any]) -> dict[str, Any]:
    s = info.get("score")
    if s is None:
        return edge_attributes(e, None, None)
    return edge_attributes(e, float(s), abs(float(s)))


def _scored_edges(G: nx.DiGraph) -> set[tuple[str, str]]:
    return {(u, v) for u, v, d in G.edges(data=True) if not d.get("internal")}


# --------------------------------------------------------------------------------------
# DOT, SVG, PNG
# --------------------------------------------------------------------------------------

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
    proportional to ``score`` over the graph's largest; internal edges grey and dashed. The
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

    ``format`` defaults to the file's suffix. Without ``dot`` on PATH this raises an
    :class:`~circuitgraph.errors.ExportError` that says how to install it.

    Example:
        >>> from circuitgraph.graph import circuit_from_edges
        >>> render(circuit_from_edges(["input->logits"]), "circuit.svg")  # doctest: +SKIP
        PosixPath('circuit.svg')
    """
    fmt = (format or Path(path).suffix.lstrip(".") or "svg").lower()
    if fmt not in ("svg", "png", "pdf"):
        raise ExportError(f"expected format svg, png or pdf but got {fmt!r}; pick one of those")
    if shutil.which("dot") is None:
        raise ExportError(_INSTALL_HINT.format(fmt=fmt.upper()))
    import graphviz

    dot = to_dot(G, title=title)
    if fmt == "png":
        dot.attr(dpi="150")
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise ExportError(_INSTALL_HINT.format(fmt=fmt.upper())) from exc
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
    return {**style, "label": label, "tooltip": "  ".join(tip)}


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
    return {"color": color, "penwidth": f"{width:.2f}", "tooltip": "  ".join(tip)}


def _label(G: nx.DiGraph, title: str | None, top: float) -> str:
    """The graph's HTML label: title, summary, warning and a one-row-per-topic legend."""
    a = G.graph
    head = title or " · ".join(str(a[k]) for k in ("task", "model") if a.get(k)) or "circuit"
    parts = [f"{a.get('n_edges', 0)} edges", f"{a.get('n_nodes', G.number_of_nodes())} nodes"]
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
        f"<TD>width &#8733; |score| (max {top:.3g})</TD>"
    )
    return (
        f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="3"><TR>{cells}</TR></TABLE>'
    )
