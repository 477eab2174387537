"""The circuit JSON of EAP-IG's ``Graph.to_json`` (the MIB circuit-localisation track).

Both ways: :func:`to_mib` writes it (optionally with our own JSON riding along under the
key ``"circuitgraph"``, which EAP-IG ignores) and :func:`from_mib` reads files written by
EAP-IG or by us.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import networkx as nx

from circuitgraph.errors import DataError, ExportError, malformed
from circuitgraph.export.files import PathLike, atomic_write, dumps, load_json
from circuitgraph.export.graphs import from_json, to_json
from circuitgraph.graph import circuit_from_edges, edge_attributes
from circuitgraph.nodes import Edge, Node

if TYPE_CHECKING:
    from circuitgraph.scores import EdgeScores

__all__ = [
    "GQA",
    "MIB_EXTRAS_KEY",
    "MIBScore",
    "from_mib",
    "is_mib",
    "read_mib",
    "to_mib",
    "write_mib",
]

#: top-level key of a MIB file under which our own JSON rides along (EAP-IG ignores it)
MIB_EXTRAS_KEY = "circuitgraph"


def is_mib(data: Any) -> bool:
    """Whether a parsed JSON document is an EAP-IG/MIB circuit (its ``cfg``/``nodes``/``edges``
    objects) rather than our own circuit JSON.

    Example:
        >>> is_mib({"cfg": {}, "nodes": {}, "edges": {}}), is_mib({"schema": "circuitgraph.circuit/1"})
        (True, False)
    """
    return isinstance(data, Mapping) and all(
        isinstance(data.get(k), Mapping) for k in ("cfg", "nodes", "edges")
    )


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
    return atomic_write(path, dumps(to_mib(G, **kwargs), indent=None))


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
    data = load_json(path, "MIB circuit")
    with malformed("EAP-IG/MIB circuit JSON", str(path)):
        return from_mib(data)


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
