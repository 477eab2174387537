"""`discover`'s verification and bound options, and what the files say about them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from circuitgraph.cli.app import app
from circuitgraph.export import read_json
from tests.cli.test_commands import _text, data  # noqa: F401  (the pairs fixture)

runner = CliRunner()
BASE = ["--keep-nodes", "8", "--n-pairs", "10", "--edge-fractions", "none"]


def _discover(gpt2_dir: str, pairs: Path, out: Path, *extra: str) -> dict:
    args = ["discover", "--model", gpt2_dir, "--data", str(pairs), "--out", str(out), "--json"]
    result = runner.invoke(app, [*args, *BASE, *extra])
    assert result.exit_code == 0, _text(result)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fixed(gpt2_dir, data, tmp_path_factory) -> tuple[Path, dict]:  # noqa: F811
    out = tmp_path_factory.mktemp("fixed")
    return out, _discover(gpt2_dir, data, out, "--verify", "3", "--budget", "60")


def test_a_fixed_top_k_marks_exactly_those_nodes_verified(fixed):
    out, summary = fixed
    g = read_json(out / "circuit.json")
    trust = g.graph["verification"]
    assert trust["rule"] == "top 3" and len(trust["nodes"]) == 3 == summary["verified_nodes"]
    for n, d in g.nodes(data=True):
        assert d.get("verified", False) == (n in trust["nodes"]), n
        assert ("exact" in d) == (n in trust["nodes"]), n
    # every circuit edge was patched exactly, and says so
    scored = [(u, v, d) for u, v, d in g.edges(data=True) if not d["internal"]]
    assert scored and all(d["verified"] and "exact" in d for *_, d in scored)
    assert sorted(trust["edges"]) == sorted(f"{u}->{v}" for u, v, _ in scored)
    # the rest was bounded in rounds within what was left of the budget
    cost = trust["cost"]
    assert cost["verification"] == 5 and 0 < cost["diagnosis"] <= 55 and cost["spent"] <= 60
    d = g.graph["diagnosis"]
    screened = len((out / "nodes.csv").read_text().strip().splitlines()) - 1
    assert d["n_unverified"] == screened - 3 and cost["exhaustive"] == screened + 2
    assert g.graph["diagnostic_bound"] == pytest.approx(d["bound"])
    assert g.graph["diagnostic_relative_bound"] == pytest.approx(d["bound"] / abs(d["gap"]))
    assert summary["diagnostic_relative_bound"] == pytest.approx(d["relative_bound"])


def test_the_report_states_the_bound_in_the_gaps_units_and_the_cost(fixed):
    out, _ = fixed
    g = read_json(out / "circuit.json")
    report = (out / "report.md").read_text()
    rel = g.graph["diagnostic_relative_bound"]
    assert "## How far to trust it" in report
    assert f"{rel:.3g} × the clean − corrupt gap" in report
    assert f"{g.graph['diagnostic_bound']:.4g}" in report
    assert "exact only for additive effects" in report
    cost = g.graph["verification"]["cost"]
    assert f"of a budget of 60 ({cost['left']:g} left)" in report
    assert "## Verified nodes (3," in report


def test_the_picture_marks_verified_nodes_and_edges(fixed):
    out, _ = fixed
    g = read_json(out / "circuit.json")
    dot = (out / "circuit.dot").read_text()
    for n, d in g.nodes(data=True):
        line = next(ln for ln in dot.splitlines() if ln.strip().startswith((f'"{n}" [', f"{n} [")))
        assert ("peripheries=2" in line) == bool(d.get("verified")), line
    edges = [ln for ln in dot.splitlines() if "->" in ln and "tooltip" in ln]
    assert edges and not any("style=dashed" in ln and "exact=" in ln for ln in edges)
    page = (out / "circuit.html").read_text()
    assert "node.verified" in page and "edge.estimate" in page


def test_auto_stops_within_the_sweep_and_says_why(gpt2_dir, data, tmp_path):  # noqa: F811
    summary = _discover(gpt2_dir, data, tmp_path, "--verify", "auto", "--verify-top-k", "3")
    g = read_json(tmp_path / "circuit.json")
    trust = g.graph["verification"]
    assert trust["rule"] == "auto" and trust["asked"] == "top 3"
    assert trust["stopped"] in ("bounded", "exhausted")
    assert summary["passes"]["spent"] <= summary["passes"]["exhaustive"]
    # tau is the 3rd largest exact effect among those verified (every verified node's exact
    # effect is in nodes.csv; the circuit holds only some of them)
    with (tmp_path / "nodes.csv").open() as f:
        exact = sorted(
            (abs(float(r["exact"])) for r in csv.DictReader(f) if r["exact"]), reverse=True
        )
    assert len(trust["nodes"]) >= 3 and trust["threshold"] <= exact[0]
    if trust["stopped"] == "bounded":
        assert g.graph["diagnostic_bound"] <= trust["threshold"]
    json.loads((tmp_path / "circuit.json").read_text())  # strict JSON: no NaN anywhere


def test_min_effect_sets_tau_directly(gpt2_dir, data, tmp_path):  # noqa: F811
    _discover(gpt2_dir, data, tmp_path, "--min-effect", "0.5")
    trust = read_json(tmp_path / "circuit.json").graph["verification"]
    assert trust["asked"] == "|effect| >= 0.5" and trust["threshold"] == 0.5


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--bound-target", "1.5"], "expected a number strictly between 0 and 1 but got 1.5"),
        (["--bound-target", "0"], "expected a number strictly between 0 and 1 but got 0.0"),
        (["--verify", "some"], "expected 'auto' or a whole number of top nodes"),
        (["--verify", "3", "--verify-k", "3"], "expected --verify or its older form --verify-k"),
        (["--min-effect", "-1"], "expected a positive finite number but got -1.0"),
    ],
)
def test_bad_trust_options_are_usage_errors(extra, says, tmp_path):
    result = runner.invoke(app, ["discover", "--out", str(tmp_path), *extra])
    text = _text(result)
    assert result.exit_code == 2, text
    assert says in text and "Traceback" not in text


def test_diagnose_draws_rounds_until_a_bound_target(gpt2_dir, data, tmp_path):  # noqa: F811
    args = ["diagnose", "--model", gpt2_dir, "--data", str(data), "--verified", "4",
            "--bound-target", "0.5", "--budget", "80", "--out", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, _text(result)
    got = json.loads((tmp_path / "diagnosis.json").read_text())
    assert got["target"] == pytest.approx(0.5 * abs(got["gap"]))
    assert got["forward_passes"] <= 80 and got["stopped"] in ("bounded", "budget", "blocked")
    if got["bound"] is not None:
        assert got["relative_bound"] == pytest.approx(got["bound"] / abs(got["gap"]))
        assert "x the clean - corrupt gap" in got["summary"]
    assert (got["bound"] is not None and got["bound"] <= got["target"]) == (
        got["stopped"] == "bounded"
    )
