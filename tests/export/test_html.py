"""The HTML viewer's page and data, without a browser (tests/export/test_html_browser.py opens it)."""

from __future__ import annotations

import json
import re

import networkx as nx
import pytest

from circuitgraph import export
from circuitgraph.errors import ExportError
from circuitgraph.export.html import to_html, viewer_data
from circuitgraph.graph import build_circuit, circuit_from_edges
from circuitgraph.scores import NodeScores
from tests.test_graph import full_scores


def discovered_like(top_n: int = 40, seed: int = 2) -> tuple[nx.DiGraph, object, NodeScores]:
    """A circuit as discover builds it: top-n of full edge scores, node scores, a curve, MIB."""
    import torch

    es = full_scores(n_layers=3, n_heads=4, seed=seed)
    nodes = tuple(dict.fromkeys(n for e in es.edges() for n in (e.src, e.dst)))
    signed = torch.linspace(-1, 1, len(nodes), dtype=torch.float64)
    ns = NodeScores(nodes, signed, signed.abs(), "atp*", "logit_diff", 32)
    mib = {"cpr": 0.9, "cmd": 0.1, "fractions": [0.1, 1.0], "sizes": [10, 100],
           "n_edges": 100, "n_scored": 100, "cpr_curve": [0.6, 1.0], "cmd_curve": [0.5, 1.0]}  # fmt: skip
    G = build_circuit(
        es, ns, top_n=top_n, verified_edges={es.ranking()[0]: 0.5},
        attrs={"model": "zoo:toy", "task": "ioi", "faithfulness_curve": [[10, 0.5], [40, 0.8]],
               "metric_clean": 3.0, "metric_corrupt": 0.0, "mib": mib},
    )  # fmt: skip
    assert G.graph["n_edges"] > 15  # a circuit worth drawing
    return G, es, ns


def visible(data: dict, k: int) -> tuple[set, set]:
    nodes = {n["id"] for n in data["nodes"] if n["k"] <= k}
    edges = {(e["s"], e["t"]) for e in data["edges"] if e["k"] <= k}
    return nodes, edges


def test_the_initial_size_shows_exactly_the_circuit():
    G, es, ns = discovered_like()
    data = viewer_data(G, es, ns)
    assert data["meta"]["initial"] == 40 and data["meta"]["n_ranked"] == len(es)
    nodes, edges = visible(data, 40)
    assert nodes == set(G.nodes) and edges == set(G.edges)
    # every attributed edge joins at some size; at the end the slider shows all that lie on paths
    full = circuit_from_edges(es.ranking())
    assert visible(data, len(es)) == (set(full.nodes), set(full.edges))


def test_elements_say_their_scores_rank_and_exact_value():
    G, es, ns = discovered_like()
    ranking = es.ranking()
    top = next(e for e in ranking if G.has_edge(e.src.id, e.dst.id))  # verified in discovered_like
    outside = next(n for n in ns.ranking() if n.id not in G)  # joins only at a larger size
    data = viewer_data(G, es, ns, verified={outside.id: -0.25})
    rows = {(e["s"], e["t"]): e for e in data["edges"]}
    row = rows[top.src.id, top.dst.id]
    assert row["r"] == ranking.index(top) + 1 and (row["sg"], row["sc"]) == pytest.approx(es[top])
    assert row["ex"] == (0.5 if top == ranking[0] else None)
    internal = [e for e in data["edges"] if e["i"]]
    assert internal and all("sg" not in e and "r" not in e for e in internal)
    nodes = {n["id"]: n for n in data["nodes"]}
    if outside.id in nodes:  # on some input -> logits path of the ranked edges
        assert nodes[outside.id]["ex"] == -0.25 and nodes[outside.id]["k"] > 40
        assert nodes[outside.id]["sg"] == pytest.approx(ns[outside][0])
        assert nodes[outside.id]["r"] == ns.ranking().index(outside) + 1


def test_a_circuit_file_alone_walks_its_own_edges_by_score():
    G, _, _ = discovered_like()
    back = export.from_json(export.to_json(G))
    data = viewer_data(back)
    assert data["meta"]["n_ranked"] == G.graph["n_edges"]
    assert visible(data, data["meta"]["n_ranked"]) == (set(G.nodes), set(G.edges))
    ranks = sorted((e["r"], e["sc"]) for e in data["edges"] if not e["i"])
    assert [sc for _, sc in ranks] == sorted((sc for _, sc in ranks), reverse=True)
    assert data["curve"] == [[10, 0.5], [40, 0.8]] and data["mib"]["cpr"] == 0.9


def test_layout_has_one_row_per_layer_part_in_order():
    G, es, ns = discovered_like()
    data = viewer_data(G, es, ns)
    y = {n["id"]: n["y"] for n in data["nodes"]}
    assert y["input"] < y["a0.h0<q>"] < y["a0.h0"] < y["m0"] < y["a1.h0<q>"] < y["logits"]
    heads = [n for n in data["nodes"] if n["kind"] == "head"]
    for layer in {n["layer"] for n in heads}:
        assert len({n["y"] for n in heads if n["layer"] == layer}) == 1
    labels = [r["label"] for r in data["rows"]]
    assert labels[0] == "input" and labels[-1] == "logits" and "L0 heads" in labels


def test_page_is_self_contained_and_escapes_its_data():
    G, es, ns = discovered_like()
    page = to_html(G, scores=es, node_scores=ns, title="</script><b>x</b>")
    assert page.startswith("<!DOCTYPE html>") and page.count("<script") == 3
    assert "Cytoscape Consortium" in page  # the vendored library and its licence, inline
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing fetched
    assert "</script><b>" not in page
    blob = re.search(
        r'<script id="circuit-data" type="application/json">(.*?)</script>', page, re.S
    )
    assert blob is not None
    assert json.loads(blob.group(1))["meta"]["title"] == "</script><b>x</b>"


def test_the_cap_warnings_and_the_writer():
    G, es, ns = discovered_like()
    data = viewer_data(G, es, ns, max_edges=30)
    assert data["meta"]["n_ranked"] == 30 and data["meta"]["n_ranked_total"] == len(es)
    assert any("top 30 of" in w for w in data["meta"]["warnings"])
    greedy = build_circuit(es, greedy=10)
    assert any("greedily" in w for w in viewer_data(greedy, es)["meta"]["warnings"])
    searched = build_circuit(es, target=0.5, faithfulness=lambda cs: [0.6] * len(cs))
    assert any("faithfulness target" in w for w in viewer_data(searched, es)["meta"]["warnings"])
    small_gap = build_circuit(es, top_n=5, attrs={"metric_clean": 2.0, "metric_corrupt": 1.95})
    assert any("gap" in w for w in viewer_data(small_gap)["meta"]["warnings"])
    with pytest.raises(ExportError, match="max_edges"):
        viewer_data(G, es, max_edges=0)
    assert export.format_of("out/circuit.html") == "html"
    assert export.SUFFIX["html"] == ".html"


def test_write_dispatches_html(tmp_path):
    G, es, _ = discovered_like()
    path = export.write(G, tmp_path / "circuit.html", scores=es)
    assert path.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(Exception, match="drawings cannot be read back"):
        export.read(path)
