"""circuit.html in a real headless Chromium: it renders the circuit's nodes and edges, the
size slider (moved with the keyboard, as a user would) changes what is shown, and a
screenshot is saved. Skipped, with the reason, where no Chromium is installed (CI installs
Debian's ``chromium``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from circuitgraph import export
from circuitgraph.export.html import viewer_data
from circuitgraph.graph import build_circuit
from tests.test_graph import full_scores

from .browser import Browser, find_chromium
from .test_html import discovered_like, visible

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium (apt-get install chromium, or set CIRCUITGRAPH_CHROMIUM to its path)",
)

COUNTS = "JSON.stringify(circuitViewer.counts())"
# what cytoscape draws, read after two animation frames (it restyles elements lazily, when it
# renders), next to the counters of the status line
SHOWN = """new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))).then(() =>
JSON.stringify({
  nodes: circuitViewer.cy.nodes('.n').filter(n => n.visible()).length,
  edges: circuitViewer.cy.edges('.scored').filter(e => e.visible()).length,
  internal: circuitViewer.cy.edges('.internal').filter(e => e.visible()).length,
  status: Object.assign({}, document.getElementById('status').dataset),
}))"""


@pytest.fixture
def browser(tmp_path):
    assert CHROMIUM is not None
    b = Browser(CHROMIUM, tmp_path / "profile")
    yield b
    b.close()


def expected(data: dict, k: int) -> dict:
    nodes, edges = visible(data, k)
    internal = {(e["s"], e["t"]) for e in data["edges"] if e["i"] and e["k"] <= k}
    return {"nodes": len(nodes), "edges": len(edges - internal), "internal": len(internal)}


def shown(browser: Browser) -> dict:
    import json

    got = json.loads(browser.eval(SHOWN))
    status = got.pop("status")
    # the status line's counters agree with what cytoscape actually draws
    assert {k: int(status[k]) for k in got} == got
    return got


def screenshot(browser: Browser, tmp_path: Path, name: str) -> Path:
    path = browser.screenshot(tmp_path / name)
    keep = os.environ.get("CIRCUITGRAPH_SCREENSHOTS")  # e.g. to look at them after CI
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def test_viewer_renders_the_circuit_and_the_slider_grows_and_shrinks_it(browser, tmp_path):
    G, es, ns = discovered_like()
    page = export.write(G, tmp_path / "circuit.html", scores=es, node_scores=ns)
    data = viewer_data(G, es, ns)
    browser.open(page.resolve().as_uri())
    # the circuit as discovered: exactly G's nodes and edges
    internal = sum(1 for *_, d in G.edges(data=True) if d.get("internal"))
    assert shown(browser) == {
        "nodes": G.number_of_nodes(), "edges": G.graph["n_edges"], "internal": internal,
    }  # fmt: skip
    assert shown(browser) == expected(data, 40)
    shot = screenshot(browser, tmp_path, "viewer.png")
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:4] == b"\x89PNG"
    # keyboard on the focused slider: End grows to every ranked edge, Home shrinks to one
    browser.eval("document.getElementById('size').focus()")
    browser.key("End", 35)
    assert int(browser.eval("document.getElementById('size').value")) == len(es)
    assert shown(browser) == expected(data, len(es))
    assert shown(browser)["edges"] > G.graph["n_edges"]
    browser.key("Home", 36)
    assert shown(browser) == expected(data, 1)
    browser.key("ArrowRight", 39)
    assert shown(browser) == expected(data, 2)
    assert browser.errors() == []


def test_viewer_search_and_highlight(browser, tmp_path):
    G, es, ns = discovered_like()
    page = export.write(G, tmp_path / "circuit.html", scores=es, node_scores=ns)
    browser.open(page.resolve().as_uri())
    head = next(n for n, d in G.nodes(data=True) if d["kind"] == "head")
    browser.eval(
        f"(() => {{ const s = document.getElementById('search'); s.value = '{head}';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    lit = browser.eval(
        "circuitViewer.cy.elements('.hl').filter(e => e.isEdge()).map(e => e.id()).length"
    )
    assert lit == G.in_degree(head) + G.out_degree(head)
    assert head in browser.eval("document.getElementById('details').textContent")
    assert browser.errors() == []


def test_viewer_stays_responsive_with_thousands_of_edges(browser, tmp_path):
    """A GPT-2-small-shaped graph (32491 scored edges, the top 5000 on the slider)."""
    es = full_scores(n_layers=12, n_heads=12, seed=0)
    G = build_circuit(es, top_n=1000)
    page = export.write(G, tmp_path / "big.html", scores=es)
    data = viewer_data(G, es)
    browser.open(page.resolve().as_uri())
    assert shown(browser) == expected(data, 1000)
    browser.eval("circuitViewer.setSize(5000), null")
    big = shown(browser)
    assert big == expected(data, 5000) and big["edges"] > 3000
    screenshot(browser, tmp_path, "viewer-5000.png")
    assert browser.errors() == []


def test_viewer_marks_what_was_verified_exactly(browser, tmp_path):
    G, es, ns = discovered_like()
    verified = {n: -0.25 for n in list(G.nodes)[:3]}
    u, v = next((u, v) for u, v, d in G.edges(data=True) if not d["internal"])
    G.edges[u, v].update(exact=0.5, verified=True)  # as discover's exact edge patching does
    page = export.write(G, tmp_path / "circuit.html", scores=es, node_scores=ns, verified=verified)
    browser.open(page.resolve().as_uri())
    data = viewer_data(G, es, ns, verified)
    want_nodes = sorted(n["id"] for n in data["nodes"] if n["ex"] is not None)
    got_nodes = browser.eval("circuitViewer.cy.nodes('.verified').map(n => n.id()).sort()")
    assert got_nodes == want_nodes and len(want_nodes) >= 3
    assert browser.eval(
        "circuitViewer.cy.nodes('.verified').every(n => n.style('border-style') === 'double')"
    )
    edges = [e for e in data["edges"] if not e["i"]]
    assert (
        browser.eval("circuitViewer.cy.edges('.verified').length")
        == sum(e["ex"] is not None for e in edges)
        == 1
    )  # discovered_like verifies its top edge
    assert browser.eval(
        "circuitViewer.cy.edges('.estimate').every(e => e.style('line-style') === 'dashed')"
        " && circuitViewer.cy.edges('.verified').every(e => e.style('line-style') === 'solid')"
    )
    assert "verified: exact effect measured" in browser.eval(
        "document.getElementById('legend').textContent"
    )
    assert browser.errors() == []
