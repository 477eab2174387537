"""report.md and faithfulness.png: what a reader sees, from a hand-made discovery."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from circuitgraph.attribution.diagnostics import Diagnosis
from circuitgraph.attribution.verify import Verification
from circuitgraph.faithfulness import MIBScores
from circuitgraph.graph import circuit_from_edges
from circuitgraph.nodes import Node
from circuitgraph.pipeline import Cost
from circuitgraph.report import faithfulness_png, report_md
from circuitgraph.scores import NodeScores
from circuitgraph.text import plural


def found(clean: float = 4.0, corrupt: float = 0.0, mib: bool = True) -> SimpleNamespace:
    G = circuit_from_edges({"input->logits": {"signed": -2.0, "score": 2.0, "internal": False}})
    G.graph.update(
        config={"metric": "logit_diff", "edge_method": "eap", "keep_nodes": 1, "node_method": "atp*"},
        n_pairs=1, faithfulness=0.75, metric_clean=clean, metric_corrupt=corrupt,
        metric_circuit=3.0, task="ioi", model="zoo:toy",
    )  # fmt: skip
    # GradDrop-like: the ranking score is not |signed|, so the table must show both
    nodes = (Node.parse("a0.h0"), Node.parse("a0.h1"), Node.parse("m0"))
    ns = NodeScores(nodes, torch.tensor([0.1, -3.0, 1.0]), torch.tensor([5.0, 3.0, 1.0]),
                    "atp*", "logit_diff", 1)  # fmt: skip
    one = torch.tensor([1.0], dtype=torch.float64)
    verification = Verification((nodes[0],), 0.1 * one, 5 * one, -0.5 * one, "atp*",
                                "logit_diff", 1, 3.0)  # fmt: skip
    scores = MIBScores((0.5, 1.0), (1, 2), 2, 1, (0.5, 1.0), (0.25, 1.0))
    return SimpleNamespace(
        circuit=G, node_scores=ns, verification=verification, diagnosis=None,
        mib=scores if mib else None, curve=[(0, 0.0), (1, 0.25), (2, 1.0)],
        timings={"screen": 0.5}, cost=Cost(5.0, 5.0, 3.0, 0.0),
    )  # fmt: skip


def test_report_reads_well():
    text = report_md(found(), picture="faithfulness.png")
    assert "**2 nodes, 1 edge**" in text and "| `input->logits` | -2 |  |" in text
    assert "over 1 prompt pair (" in text and "top 1 node by" in text
    assert not re.search(r"\b1 (edges|nodes|pairs|prompt pairs)\b", text)
    assert "![Faithfulness by circuit size](faithfulness.png)" in text
    assert "**CPR 0.375**" in text and "**CMD 0.188**" in text
    assert "warning" not in text
    table = text[text.index("## Top nodes") :].splitlines()
    assert table[0] == "## Top nodes (ranked by atp* score)"
    assert table[2] == "| rank | node | atp* score (ranks) | signed estimate | exact effect |"
    assert table[4] == "| 1 | `a0.h0` | 5 | +0.1 | -0.5 |"  # ranked by 5, signed +0.1
    assert table[5] == "| 2 | `a0.h1` | 3 | -3 |  |"
    curve = text[text.index("## Faithfulness by circuit size") :]
    assert "| 1 | 50% | 0.250 | 0.500 |" in curve and "| 2 | 100% | 1.000 | 1.000 |" in curve


def test_report_says_what_was_verified_the_bound_in_the_gaps_units_and_the_cost():
    f = found()
    f.circuit.graph["verification"] = {"rule": "top 1"}
    t = torch.tensor
    f.diagnosis = Diagnosis(
        (Node.parse("a0.h1"), Node.parse("m0")), t([0.1, 0.0]), t([0.05, 0.05]), t([0.2, 0.1]),
        0.2, 0.95, 0.25, 40, 0, "logit_diff", 1, 42.0, gap=4.0, target=0.4,
    )  # fmt: skip
    f.cost = Cost(5.0, 50.0, 3.0, 42.0)
    text = report_md(f)
    trust = text[text.index("## How far to trust it") : text.index("## Top nodes")]
    assert "(`--verify 1`): **1 node**" in trust
    assert "**0.2** = **0.05 × the clean − corrupt gap** (4)" in trust
    assert "no unverified node moves the metric by more than 5.0% of what patching" in trust
    assert (
        "45 forward passes per pair spent verifying and bounding (3 + 42) of a budget of "
        "50 (5 left); the exhaustive sweep of every screened node costs 5" in trust
    )
    assert "exact only for additive effects" in trust
    verified = text[text.index("## Verified nodes") :].splitlines()
    assert verified[4] == "| `a0.h0` | 1 | +0.1 | -0.5 |"


def test_report_warns_when_the_clean_corrupt_gap_is_small():
    text = report_md(found(clean=4.0, corrupt=3.9, mib=False))
    assert "- **warning: the clean − corrupt gap +0.1 is small" in text
    assert "CPR" not in text and "| edges | F |" in text


def test_plural():
    assert [plural(n, "edge") for n in (0, 1, 2)] == ["0 edges", "1 edge", "2 edges"]
    assert plural(1.0, "forward pass", "forward passes") == "1 forward pass"


def test_faithfulness_png():
    f = found()
    png = faithfulness_png(f.curve, mib=f.mib.to_json(), circuit_size=1, title="ioi · toy")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
