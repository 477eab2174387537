"""Exports: exact round trips (our JSON, node-link, GraphML, MIB), DOT, rendering, atomic writes."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import networkx as nx
import pytest
import torch

from circuitgraph import export
from circuitgraph.errors import DataError, ExportError
from circuitgraph.graph import build_circuit, circuit_from_edges
from circuitgraph.scores import NodeScores
from tests.test_graph import full_scores, scores_from

CFG = {"n_layers": 3, "n_heads": 4, "d_model": 16, "parallel_attn_mlp": False}


def strict_equal(a: Any, b: Any) -> bool:
    """Equal values of equal types, recursively (True != 1, 1.0 != 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN == NaN here


def assert_same_graph(G: nx.DiGraph, H: nx.DiGraph) -> None:
    assert list(G.nodes) == list(H.nodes)
    assert strict_equal(dict(G.nodes(data=True)), dict(H.nodes(data=True)))
    assert sorted(G.edges) == sorted(H.edges)
    for u, v, d in G.edges(data=True):
        assert strict_equal(d, H.edges[u, v]), (u, v)
    assert strict_equal(G.graph, H.graph)


@pytest.fixture(scope="module")
def circuit() -> nx.DiGraph:
    """A 3-layer circuit with node scores, verified values and rich graph attributes."""
    es = full_scores()
    heads = tuple(n for n in es.sources if n.kind == "head")
    signed = torch.linspace(-1, 1, len(heads), dtype=torch.float64) / 3  # inexact floats
    ns = NodeScores(heads, signed, signed.abs(), "atp*", "logit_diff", 32)
    G = build_circuit(
        es, ns, greedy=40,
        verified_nodes={"a0.h0": 0.1 + 0.2}, verified_edges={"input->a0.h0<q>": 1 / 3},
        attrs={"model": "zoo:toy", "task": "ioi", "faithfulness": 0.8125,
               "faithfulness_curve": [[5, 0.25], [40, 0.8125]], "diagnostic_bound": None,
               "versions": {"circuitgraph": "0.1.0"}, "note": "json:looks encoded", **CFG},
    )  # fmt: skip
    assert G.graph["n_edges"] > 20
    return G


@pytest.fixture(scope="module")
def odd_circuit() -> nx.DiGraph:
    """Per-position, grouped-KV and neuron nodes (not MIB-expressible)."""
    return circuit_from_edges(
        {"input@0->a0.kv0<k>@0": {"signed": -0.1, "score": 0.1, "internal": False},
         "input@2->a0.h1<q>@2": {"signed": 2.0, "score": 2.0, "internal": False},
         "a0.h1@2->logits@2": {"signed": 1e-300, "score": 1e-300, "internal": False},
         "m0.n3@2->logits@2": {"signed": 0.5, "score": 0.5, "internal": False},
         "input@2->m0@2": {"signed": 0.5, "score": 0.5, "internal": False}},
        attrs={"heads_per_kv": 2, "empty": [], "nested": {"a": [1, 2.5, None]}},
        heads_per_kv=2,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------


def test_our_json_round_trip_is_exact(circuit, odd_circuit, tmp_path):
    for G in (circuit, odd_circuit):
        d = export.to_json(G)
        assert d["schema"] == "circuitgraph.circuit/1"
        assert_same_graph(G, export.from_json(json.loads(json.dumps(d))))
        export.write_json(G, tmp_path / "c.json")
        assert_same_graph(G, export.read_json(tmp_path / "c.json"))
    assert export.to_json(circuit)["nodes"][0] == {
        "id": "input", "kind": "input", "layer": None, "position": None,
    }  # fmt: skip


def test_our_json_refuses_other_schemas_and_damaged_files(tmp_path):
    with pytest.raises(DataError, match=r"schema 'circuitgraph\.circuit/1'"):
        export.from_json({"schema": "circuitgraph.circuit/9"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        export.read_json(tmp_path / "bad.json")
    with pytest.raises(DataError, match="readable circuit file"):
        export.read_json(tmp_path / "missing.json")


def test_node_link_round_trip_is_exact(circuit, odd_circuit, tmp_path):
    for G in (circuit, odd_circuit):
        export.write_node_link(G, tmp_path / "nl.json")
        assert_same_graph(G, export.read_node_link(tmp_path / "nl.json"))
    assert "edges" in json.loads((tmp_path / "nl.json").read_text())


def test_graphml_round_trip_is_exact(circuit, odd_circuit, tmp_path):
    for G in (circuit, odd_circuit):
        export.write_graphml(G, tmp_path / "c.graphml")
        assert_same_graph(G, export.read_graphml(tmp_path / "c.graphml"))
    text = (tmp_path / "c.graphml").read_text()
    assert 'json:{"a": [1, 2.5, null]}' in text.replace("&quot;", '"')


# --------------------------------------------------------------------------------------
# EAP-IG / MIB JSON
# --------------------------------------------------------------------------------------


def test_mib_lists_the_full_model_in_eap_ig_order(circuit):
    d = export.to_mib(circuit, extras=False)
    assert set(d) == {"cfg", "nodes", "edges"} and d["cfg"] == CFG
    names = list(d["edges"])
    assert names[:4] == ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->a0.h1<q>"]
    L, H = CFG["n_layers"], CFG["n_heads"]
    n_edges = sum(3 * H * (1 + i * (H + 1)) + (1 + i * (H + 1) + H) for i in range(L))
    assert len(names) == n_edges + 1 + L * (H + 1)  # ... plus every source into the logits
    assert "a1.h0->m1" in d["edges"] and "m1->a1.h0<q>" not in d["edges"]
    assert list(d["nodes"])[:2] == ["input", "a0.h0"] and list(d["nodes"])[-1] == "logits"
    for u, v, a in circuit.edges(data=True):
        if not a["internal"]:
            assert d["edges"][f"{u}->{v}"] == {"score": a["signed"], "in_graph": True}
    assert sum(e["in_graph"] for e in d["edges"].values()) == circuit.graph["n_edges"]
    heads = [n for n, a in circuit.nodes(data=True) if a["kind"] in ("head", "mlp")]
    assert all(d["nodes"][n]["in_graph"] for n in heads)
    assert d["nodes"]["a0.h0"]["score"] == circuit.nodes["a0.h0"]["signed"]


def test_mib_round_trip_with_extras_is_exact(circuit, tmp_path):
    export.write_mib(circuit, tmp_path / "c.mib.json")
    G = export.read_mib(tmp_path / "c.mib.json")
    assert_same_graph(circuit, G)


def test_mib_round_trip_without_extras_keeps_structure_and_signed_scores(circuit):
    G = export.from_mib(json.loads(json.dumps(export.to_mib(circuit, extras=False))))
    assert list(G.nodes) == list(circuit.nodes) and set(G.edges) == set(circuit.edges)
    for u, v, a in circuit.edges(data=True):
        b = G.edges[u, v]
        assert b["internal"] == a["internal"]
        if not a["internal"]:
            assert (b["signed"], b["score"], b["target_input"]) == (
                a["signed"], abs(a["signed"]), a["target_input"],
            )  # fmt: skip
    assert G.graph["source_format"] == "mib" and G.graph["n_layers"] == 3
    assert G.nodes["a0.h0"]["signed"] == circuit.nodes["a0.h0"]["signed"]


def test_mib_options_scores_partial_and_absolute(circuit):
    es = full_scores()
    d = export.to_mib(circuit, scores=es, extras=False)
    off = [n for n, e in d["edges"].items() if not e["in_graph"]]
    assert off and all(d["edges"][n]["score"] == es[n][0] for n in off)
    part = export.to_mib(circuit, complete=False, value="score", extras=False)
    assert len(part["edges"]) == circuit.graph["n_edges"]
    assert all(e["score"] >= 0 and e["in_graph"] for e in part["edges"].values())
    assert set(export.from_mib(part).edges) == set(circuit.edges)


def test_mib_reads_eap_ig_files_and_refuses_what_it_cannot_say(odd_circuit):
    eap = {  # the shape of EAP-IG's Graph.to_json: all nodes/edges, in_graph flags
        "cfg": {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8},
        "nodes": {"input": {"in_graph": True}, "a0.h0": {"in_graph": True},
                  "a0.h1": {"in_graph": False}, "m0": {"in_graph": True},
                  "logits": {"in_graph": True}},
        "edges": {"input->a0.h0<q>": {"score": 0.5, "in_graph": True},
                  "input->a0.h1<k>": {"score": 0.01, "in_graph": False},
                  "a0.h0->m0": {"score": -0.25, "in_graph": True},
                  "m0->logits": {"score": 1.5, "in_graph": True},
                  "input->logits": {"in_graph": True}},
    }  # fmt: skip
    G = export.from_mib(eap)
    assert list(G.nodes) == ["input", "a0.h0<q>", "a0.h0", "m0", "logits"]
    assert G.edges["a0.h0", "m0"]["signed"] == -0.25 and "score" not in G.edges["input", "logits"]
    with pytest.raises(DataError, match="'edges' objects"):
        export.from_mib({"cfg": {}, "nodes": {}})
    with pytest.raises(ExportError, match="n_layers"):
        export.to_mib(circuit_from_edges(["input->logits"]))
    with pytest.raises(ExportError, match="token positions"):
        export.to_mib(odd_circuit, CFG)
    with pytest.raises(ExportError, match="cfg"):
        export.to_mib(
            circuit_from_edges(["a2.h0->logits", "input->a2.h0<q>"]), {**CFG, "n_layers": 2}
        )


def test_mib_grouped_kv_edges_expand_only_when_asked():
    G = circuit_from_edges(
        {"input->a0.kv1<v>": {"signed": -1.0, "score": 1.0, "internal": False},
         "a0.h3->logits": {"signed": 0.5, "score": 0.5, "internal": False}},
        attrs={**CFG, "n_kv_heads": 2}, heads_per_kv=2,
    )  # fmt: skip
    with pytest.raises(ExportError, match="gqa='expand'"):
        export.to_mib(G)
    d = export.to_mib(G, gqa="expand")
    assert d["edges"]["input->a0.h2<v>"] == {"score": -0.5, "in_graph": True}
    assert d["edges"]["input->a0.h3<v>"] == {"score": -0.5, "in_graph": True}
    H = export.from_mib(d)  # the extras name the KV edge: ignored, with a warning
    assert "ignored" in H.graph["warning"] and ("a0.h3<v>", "a0.h3") in H.edges


# --------------------------------------------------------------------------------------
# DOT and rendering
# --------------------------------------------------------------------------------------

_STMT = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|[\w.]+)\s*\[')


def node_statements(source: str) -> list[str]:
    names = []
    for line in source.splitlines():
        m = _STMT.match(line)
        if m and "->" not in line and m[1] not in ("node", "edge", "graph"):
            names.append(m[1].strip('"'))
    return names


def test_dot_has_one_node_statement_per_node_and_one_row_per_layer(circuit, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # DOT needs no Graphviz binary
    dot = export.to_dot(circuit)
    names = node_statements(dot.source)
    assert sorted(names) == sorted(circuit.nodes)
    rows = {(a["kind"] == "head", a["layer"]) for _, a in circuit.nodes(data=True)
            if a["kind"] in ("head", "mlp")}  # fmt: skip
    assert dot.source.count("rank=same") == len(rows)
    assert dot.source.count("rank=min") == 1 and dot.source.count("rank=max") == 1
    assert "#d03030" in dot.source and "#1f5fbf" in dot.source and "positive effect" in dot.source
    export.write_dot(circuit, tmp_path / "c.dot")
    assert (tmp_path / "c.dot").read_text() == dot.source


def test_dot_of_an_empty_circuit_shows_the_warning():
    G = build_circuit(scores_from({"m0->logits": 1.0}), top_n=1)
    dot = export.to_dot(G)
    assert node_statements(dot.source) == [] and "input -&gt; logits" in dot.source


def test_render_needs_dot_and_says_how_to_install_it(circuit, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ExportError, match="apt-get install graphviz") as err:
        export.render(circuit, tmp_path / "c.svg")
    assert "\n" not in str(err.value) and "brew install graphviz" in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="svg, png or pdf"):
        export.render(circuit, tmp_path / "c.gif")


def test_render_writes_svg_and_png_when_dot_is_installed(circuit, tmp_path):
    if shutil.which("dot") is None:  # this machine: the error path, as a user would see it
        with pytest.raises(ExportError, match="apt-get install graphviz"):
            export.render(circuit, tmp_path / "c.svg")
        return
    svg = export.render(circuit, tmp_path / "c.svg")
    assert "<svg" in svg.read_text() and "a0.h0" in svg.read_text()
    png = export.render(circuit, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "c.svg"]


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------


def test_atomic_write_failure_leaves_no_file_and_no_temp(monkeypatch, tmp_path):
    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ExportError, match="No space left"):
        export.atomic_write(tmp_path / "c.json", "{}")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old.json").write_text("old")
    with pytest.raises(ExportError):
        export.write_json(circuit_from_edges(["input->logits"]), tmp_path / "old.json")
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]
    assert (tmp_path / "old.json").read_text() == "old"


def test_atomic_write_replaces_keeps_mode_and_checks_the_folder(tmp_path):
    p = export.atomic_write(tmp_path / "a.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
    p.chmod(0o600)
    export.atomic_write(p, "text é")
    assert p.read_text(encoding="utf-8") == "text é" and p.stat().st_mode & 0o777 == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(ExportError, match="does not exist"):
        export.atomic_write(tmp_path / "nope" / "x.json", "{}")


def test_export_module_does_no_work_at_import():
    import subprocess
    import sys

    code = "import sys, circuitgraph.export; print('graphviz' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------
# Strict JSON, write errors, damaged files
# --------------------------------------------------------------------------------------


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_dumps_writes_non_finite_numbers_as_null_and_says_where():
    from circuitgraph.export.files import dumps

    doc = {"f": float("nan"), "curve": [[5, float("inf")], [9, 0.5]], "warnings": ["earlier"]}
    got = _strict(dumps(doc))
    assert got["f"] is None and got["curve"] == [[5, None], [9, 0.5]]
    assert got["warnings"] == [
        "earlier",
        "f: NaN written as null",
        "curve[0][1]: inf written as null",
    ]
    many = _strict(dumps({"xs": [float("-inf")] * 25}))
    assert len(many["warnings"]) == 11 and "15 more" in many["warnings"][-1]
    assert _strict(dumps([float("nan")])) == [None]  # no place for warnings in a list
    assert "warnings" not in _strict(dumps({"f": 1.0}))


def test_circuit_json_with_nan_faithfulness_is_strict_and_reads_back_as_none(tmp_path):
    G = circuit_from_edges(["input->logits"], attrs={"faithfulness": float("nan")})
    path = export.write(G, tmp_path / "c.json")
    doc = _strict(path.read_text())
    assert doc["graph"]["faithfulness"] is None
    assert doc["warnings"] == ["graph.faithfulness: NaN written as null"]
    assert export.read(path).graph["faithfulness"] is None


@pytest.mark.parametrize(
    ("errno_", "match"),
    [(28, "the disk is full .*free some space"), (13, "Permission denied; choose a folder")],
)
def test_write_errors_name_the_cause(monkeypatch, tmp_path, errno_, match):
    import tempfile

    def fsync(fd):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ExportError, match=match):
        export.atomic_write(tmp_path / "c.json", "{}")
    monkeypatch.undo()

    def mkstemp(*args, **kwargs):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(ExportError, match=match):  # creating the temporary file fails too
        export.atomic_write(tmp_path / "c.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_left_by_an_interrupted_clean_up_is_removed(monkeypatch, tmp_path):
    from circuitgraph.export import files

    def interrupted(src, dst):
        raise KeyboardInterrupt

    def unlink_interrupted(path):
        raise OSError(4, "Interrupted system call")

    monkeypatch.setattr(os, "replace", interrupted)
    monkeypatch.setattr(os, "unlink", unlink_interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.atomic_write(tmp_path / "c.json", "{}")
    monkeypatch.undo()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".c.json.") and left.name.endswith(".tmp")
    assert files.remove_temp_files() == [left] and list(tmp_path.iterdir()) == []
    assert files.remove_temp_files() == []


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("c.json", {"schema": "circuitgraph.circuit/1", "nodes": [{}]}, "the key 'id' is missing"),
        ("c.json", {"schema": "circuitgraph.circuit/1", "nodes": "abc"}, "malformed"),
        ("c.json", {"cfg": {}, "nodes": {}, "edges": {"input->logits": []}}, "malformed"),
        ("c.json", {"directed": True, "nodes": [{"id": 3}], "edges": []}, "but got 3"),
        ("c.json", {"schema": "circuitgraph.circuit/1", "nodes": [{"id": "x"}]}, "got 'x'"),
        ("c.graphml", "<graphml", "expected a GraphML file"),
    ],
)
def test_damaged_circuit_files_are_one_data_error(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError, match=match) as err:
        export.read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_damaged_score_files_are_one_data_error():
    from circuitgraph.scores import EdgeScores

    with pytest.raises(DataError, match=r"in edges.json but its content is malformed"):
        EdgeScores.from_json({"schema": "circuitgraph.edge_scores/1"}, "edges.json")
    with pytest.raises(DataError, match=r"malformed \(the key 'signed' is missing\)"):
        NodeScores.from_json(
            {"schema": "circuitgraph.node_scores/1", "nodes": [{"id": "m0"}], "method": "x"}
        )
