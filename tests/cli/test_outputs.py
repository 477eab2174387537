"""What successful runs write when something is off: strict JSON with warnings, the
explicit Graphviz skip, and a real full disk (a tiny tmpfs, where this process may mount)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest
from typer.testing import CliRunner

from circuitgraph.cli.app import app

from .faults import DISCOVER, QUICK, Case

runner = CliRunner()


def _strict(text: str):
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in strict JSON")

    return json.loads(text, parse_constant=refuse)


def _swapped_pairs(case: Case):
    """Three pairs and their mirrors (clean and corrupt exchanged): the clean − corrupt
    gap of the means cancels exactly, while every single pair has an effect."""
    w, rows = case.words, []
    for i in range(3):
        x, y = f"{w[i]} {w[5]} {w[6]} {w[i]}", f"{w[i + 10]} {w[5]} {w[6]} {w[i]}"
        rows.append({"clean": x, "corrupt": y, "answer": w[5], "wrong": w[7]})
        rows.append({"clean": y, "corrupt": x, "answer": w[5], "wrong": w[7]})
    return case.pairs(rows, "swapped.jsonl")


def test_a_cancelling_gap_gives_null_faithfulness_and_warnings_in_strict_json(tmp_path):
    case = Case(tmp_path)
    args = [*DISCOVER, "--n-pairs", "6", "--data", str(_swapped_pairs(case))]
    result = runner.invoke(app, ["discover", *args, "--json", "--out", str(case.out)])
    assert result.exit_code == 0, result.stderr
    summary = _strict(result.stdout)
    assert summary["faithfulness"] is None
    assert any("faithfulness not computed" in w for w in summary["warnings"])
    assert "faithfulness: NaN written as null" in summary["warnings"]
    lines = result.stderr.splitlines()
    assert lines and all(x.startswith("warning: ") for x in lines), lines
    assert len(lines) == len(set(lines))  # each warning once
    for name in ("circuit.json", "edges.json", "manifest.json"):
        _strict((case.out / name).read_text())
    circuit = _strict((case.out / "circuit.json").read_text())
    assert circuit["graph"]["faithfulness"] is None
    assert "graph.faithfulness: NaN written as null" in circuit["warnings"]


def test_some_identical_pairs_are_one_warning_line_and_listed_in_json(tmp_path):
    case = Case(tmp_path)
    rows = [case.pair(), case.pair(corrupt=case.pair()["clean"])]
    args = [*QUICK, "--data", str(case.pairs(rows)), "--json", "--out", str(case.out)]
    result = runner.invoke(app, ["nodes", *args])
    assert result.exit_code == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: 1 of 2 pairs have identical clean and corrupt prompts")
    assert _strict(result.stdout)["warnings"] == [line.removeprefix("warning: ")]


def test_a_missing_graphviz_is_an_explicit_skip(tmp_path, monkeypatch):
    import circuitgraph.export.draw as draw

    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    case = Case(tmp_path)
    result = runner.invoke(app, ["discover", *DISCOVER, "--json", "--out", str(case.out)])
    assert result.exit_code == 0, result.stderr
    summary = _strict(result.stdout)
    assert summary["skipped"] == ["circuit.svg", "circuit.png"]
    assert "Graphviz 'dot'" in summary["notes"][0]
    assert not {"circuit.svg", "circuit.png"} & set(summary["files"])
    assert not list(case.out.glob("circuit.*g"))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs: the JSON, CSV, DOT and SVG of a small circuit fit, its PNG does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = "size=96k"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", size, f"cg-test-{uuid.uuid4().hex[:8]}", str(mount)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the patched writer covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.skipif(shutil.which("dot") is None, reason="drawing needs Graphviz dot")
def test_a_real_full_disk_fails_the_run_and_keeps_the_finished_files(tiny_disk):
    out = tiny_disk / "run"
    result = runner.invoke(app, ["discover", *DISCOVER, "--json", "--out", str(out)])
    assert result.exit_code == 1, result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: could not write ") and "the disk is full" in line
    assert result.stdout == ""
    names = sorted(p.name for p in out.iterdir())
    assert "circuit.json" in names and not [n for n in names if n.startswith(".")]
    for p in out.iterdir():  # what stays is complete
        data = p.read_bytes()
        if p.suffix == ".json":
            _strict(data.decode())
        elif p.suffix == ".png":
            raise AssertionError("the PNG cannot fit")
        assert data
