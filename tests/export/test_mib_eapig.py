"""Circuits written by EAP-IG's ``Graph.to_json`` read like ours: Python and the CLI.

The fixture ``tests/fixtures/eapig_tiny_gpt2.json`` has EAP-IG's layout for a 2-layer,
4-head model: ``cfg``, every node (unscored ones with ``NaN`` scores, as ``json.dump``
writes them) and every edge of ``Graph.from_model`` in its order, 8 of them ``in_graph``,
and none of our own extras.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import circuitgraph as cg
from circuitgraph.cli.app import app

FIXTURE = Path(__file__).parent.parent / "fixtures" / "eapig_tiny_gpt2.json"
runner = CliRunner()


def _in_graph() -> dict[str, float]:
    raw = json.loads(FIXTURE.read_text())
    return {e: v["score"] for e, v in raw["edges"].items() if v["in_graph"]}


def test_the_fixture_is_eapig_shaped() -> None:
    raw = json.loads(FIXTURE.read_text())
    assert set(raw) == {"cfg", "nodes", "edges"} and "schema" not in raw
    assert len(raw["edges"]) == 110 and len(_in_graph()) == 8
    assert any(math.isnan(n["score"]) for n in raw["nodes"].values())


def test_read_takes_eapig_json_by_content() -> None:
    G = cg.read(FIXTURE)
    got = {f"{u}->{v}": d["signed"] for u, v, d in G.edges(data=True) if not d["internal"]}
    assert got == _in_graph()
    assert G.graph["source_format"] == "mib" and G.graph["n_heads"] == 4
    # internal edges join each head's inputs to its output
    assert G.has_edge("a1.h2<k>", "a1.h2") and G.has_edge("a1.h2<q>", "a1.h2")


def test_cli_export_takes_eapig_json(tmp_path: Path) -> None:
    out = tmp_path / "from-eapig.json"
    result = runner.invoke(app, ["export", str(FIXTURE), "--format", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ours = cg.read(out)
    assert {e.id for e in cg.circuit_edges(ours)} == set(_in_graph())
    dot = tmp_path / "from-eapig.dot"
    result = runner.invoke(app, ["export", str(FIXTURE), "--format", "dot", "--out", str(dot)])
    assert result.exit_code == 0 and "a1.h2" in dot.read_text()


def test_cli_verify_takes_eapig_json(gpt2_dir: str, tmp_path: Path) -> None:
    from tests.cli.test_commands import WORDS, _jsonl

    rows = [
        {"clean": "w1 w2 w3 w4", "corrupt": "w1 w9 w3 w4", "answer": "w5", "wrong": "w6"},
        {"clean": "w7 w2 w8 w4", "corrupt": "w7 w2 w8 w1", "answer": WORDS[10], "wrong": "w6"},
    ]
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    result = runner.invoke(
        app,
        [
            "verify",
            str(FIXTURE),
            "--model",
            gpt2_dir,
            "--data",
            str(data),
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "verify.json").read_text())
    assert written["n_edges"] == 8
    assert {r["edge"] for r in written["edges"]} == set(_in_graph())
    assert all(r["exact"] is not None for r in written["edges"])


def test_mib_export_carries_every_edge_score(tmp_path: Path) -> None:
    """An MIB file written with the edge scores lists every edge with its score, from Python
    and from ``circuitgraph export --scores edges.json``."""
    import torch

    from circuitgraph.attribution import EdgeSet
    from circuitgraph.model import ModelInfo

    info = ModelInfo("m", 2, 4, 4, 32, 8, 64, "LN", False, False, False, 48, 32)
    cands = EdgeSet.full(info)
    signed = torch.arange(cands.valid.numel(), dtype=torch.float64).view_as(cands.valid.double())
    signed = torch.where(cands.valid, signed / 100, 0.0)
    scores = cg.EdgeScores(
        cands.sources, cands.targets, signed, signed.abs(), cands.valid, "eap", "logit_diff", 4
    )
    G = cg.read(FIXTURE)
    path = cg.write(G, tmp_path / "c.mib.json", scores=scores)
    raw = json.loads(path.read_text())
    outside = [e for e, v in raw["edges"].items() if not v["in_graph"]]
    assert len(raw["edges"]) == 110 and len(outside) == 102
    for e in outside:
        assert raw["edges"][e]["score"] == pytest.approx(scores[e][0])
    (tmp_path / "edges.json").write_text(json.dumps(scores.to_json()))
    out = tmp_path / "cli.mib.json"
    result = runner.invoke(
        app,
        ["export", str(FIXTURE), "--format", "mib", "--scores", str(tmp_path / "edges.json"),
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    again = json.loads(out.read_text())
    assert again["edges"]["a0.h0->logits"]["score"] == pytest.approx(scores["a0.h0->logits"][0])
