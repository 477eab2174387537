"""Every command through Typer's CliRunner, the files it writes, and each bad input."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import networkx as nx
import pytest
from typer.testing import CliRunner

from circuitgraph.cli.app import app
from circuitgraph.export import read_json

runner = CliRunner()
WORDS = [f"w{i}" for i in range(44)]


def _text(result) -> str:
    out = result.output
    with contextlib.suppress(ValueError):  # stderr may be mixed into output already
        out += result.stderr
    return out


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(10):
        toks = [rng.choice(WORDS) for _ in range(6)]
        bad = list(toks)
        bad[2] = rng.choice(WORDS)
        rows.append(
            {
                "clean": " ".join(toks),
                "corrupt": " ".join(bad),
                "answer": rng.choice(WORDS),
                "wrong": rng.choice(WORDS),
            }
        )
    return _jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", rows)


SMALL = ["--keep-nodes", "8", "--verify-k", "3", "--diagnose-subsets", "12", "--n-pairs", "10"]


@pytest.fixture(scope="module")
def discovered(gpt2_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disc")
    result = runner.invoke(
        app, ["discover", "--model", gpt2_dir, "--data", str(data), "--out", str(out), *SMALL]
    )
    assert result.exit_code == 0, _text(result)
    return out


def test_discover_writes_every_file(discovered):
    names = {p.name for p in discovered.iterdir()}
    assert {
        "circuit.json",
        "circuit.dot",
        "nodes.csv",
        "edges.csv",
        "report.md",
        "manifest.json",
        "circuit.html",
        "faithfulness.png",
    } <= names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    g = read_json(discovered / "circuit.json")
    assert g.graph["n_edges"] > 0 and 0 < g.graph["n_nodes"] == g.number_of_nodes()
    assert "faithfulness" in g.graph and "diagnostic_bound" in g.graph
    # every circuit node lies on an input -> logits path
    for n in g.nodes:
        assert nx.has_path(g, "input", n) and nx.has_path(g, n, "logits")
    report = (discovered / "report.md").read_text()
    assert "faithfulness" in report and "false-negative bound" in report and "Timings" in report
    assert "![Faithfulness by circuit size](faithfulness.png)" in report
    assert f"**CPR {g.graph['mib']['cpr']:.3f}**" in report and "CMD" in report
    assert not re.search(r"\b1 (edges|nodes|pairs)\b", report)
    assert (discovered / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    page = (discovered / "circuit.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "circuit-data" in page
    mib = g.graph["mib"]
    assert mib["fractions"][0] == 0.001 and mib["n_scored"] < mib["n_edges"]
    manifest = json.loads((discovered / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 0 and "torch" in manifest["versions"]
    assert manifest["config"]["bos"] is True and g.graph["bos"] is True  # the tokenizer's way


def test_discover_searches_for_the_target_by_default(discovered):
    g = read_json(discovered / "circuit.json")
    s = g.graph["search"]
    assert g.graph["selection"]["rule"] == "target" and s["target"] == 0.8
    assert s["n_edges"] == g.graph["n_edges"] <= s["max_edges"] == 1000
    completed = [d for *_, d in g.edges(data=True) if d.get("completion")]
    assert len(completed) == g.graph["selection"]["completion"]
    report = (discovered / "report.md").read_text()
    assert s["summary"] in report and "## The target search (faithfulness >= 0.8" in report


def test_an_unreachable_target_is_said_on_the_terminal(gpt2_dir, data, tmp_path):
    args = ["discover", "--model", gpt2_dir, "--data", str(data), "--out", str(tmp_path), *SMALL]
    extra = ["--target-faithfulness", "40", "--max-edges", "3", "--no-grow-nodes",
             "--edge-fractions", "none"]  # fmt: skip
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, _text(result)
    assert "No circuit of at most 3 edges reached faithfulness >= 40" in result.stdout
    g = read_json(tmp_path / "circuit.json")
    assert 0 < g.graph["n_edges"] <= 3 and not g.graph["search"]["reached"]


def test_dot_has_one_node_per_circuit_node_and_ranks_per_layer(discovered):
    g = read_json(discovered / "circuit.json")
    dot = (discovered / "circuit.dot").read_text()
    declared = re.findall(r'^\s*"?([\w.<>@]+)"? \[', dot, flags=re.M)
    declared = [d for d in declared if d not in ("graph", "node", "edge")]
    assert sorted(declared) == sorted(g.nodes)
    head_layers = {d["layer"] for _, d in g.nodes(data=True) if d["kind"] == "head"}
    assert dot.count("rank=same") >= len(head_layers)


def test_same_seed_gives_identical_json(gpt2_dir, data, discovered, tmp_path):
    result = runner.invoke(
        app, ["discover", "--model", gpt2_dir, "--data", str(data), "--out", str(tmp_path), *SMALL]
    )
    assert result.exit_code == 0, _text(result)
    for name in ("circuit.json", "nodes.csv", "edges.csv"):
        assert (tmp_path / name).read_bytes() == (discovered / name).read_bytes(), name
    # the manifest records the command line, which differs by --out alone
    again, first = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path, discovered))
    out = again["command_line"].index("--out") + 1
    assert again["command_line"][out] == str(tmp_path)
    again["command_line"][out] = first["command_line"][out]
    assert again == first


def test_discover_json_summary(gpt2_dir, data, tmp_path):
    result = runner.invoke(
        app,
        [
            "discover",
            "--model",
            gpt2_dir,
            "--data",
            str(data),
            "--out",
            str(tmp_path),
            "--json",
            *SMALL,
            "--diagnose-subsets",
            "0",
        ],
    )
    assert result.exit_code == 0, _text(result)
    summary = json.loads(result.stdout)
    assert summary["n_edges"] > 0 and summary["diagnostic_bound"] is None


@pytest.mark.parametrize("method", ["atp*", "atp", "exact"])
def test_nodes_command(gpt2_dir, data, tmp_path, method):
    result = runner.invoke(
        app,
        [
            "nodes",
            "--model",
            gpt2_dir,
            "--data",
            str(data),
            "--method",
            method,
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, _text(result)
    from circuitgraph.scores import NodeScores

    scores = NodeScores.from_json(json.loads((tmp_path / "nodes.json").read_text()))
    assert (
        scores.method == method
        and len(scores) == len((tmp_path / "nodes.csv").read_text().splitlines()) - 1
    )


def test_edges_command(gpt2_dir, data, tmp_path):
    result = runner.invoke(
        app,
        [
            "edges",
            "--model",
            gpt2_dir,
            "--data",
            str(data),
            "--keep-nodes",
            "6",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, _text(result)
    from circuitgraph.scores import EdgeScores

    scores = EdgeScores.from_json(json.loads((tmp_path / "edges.json").read_text()))
    assert len(scores) > 0 and scores.method == "eap"


def test_verify_command(discovered, tmp_path):
    result = runner.invoke(
        app, ["verify", str(discovered / "circuit.json"), "--n-pairs", "10", "--out", str(tmp_path),
              "--edge-fractions", "0.05,0.2,1"],
    )  # fmt: skip
    assert result.exit_code == 0, _text(result)
    got = json.loads((tmp_path / "verify.json").read_text())
    g = read_json(discovered / "circuit.json")
    assert got["faithfulness"] == pytest.approx(g.graph["faithfulness"], abs=1e-9)
    assert len(got["edges"]) == g.graph["n_edges"]
    mib = got["mib"]
    assert mib["ranked"] == "circuit" and mib["n_scored"] == g.graph["n_edges"]
    assert mib["fractions"] == [0.05, 0.2, 1.0] and f"CPR {mib['cpr']:.3f}" in result.output


def test_verify_with_the_edge_scores_reproduces_discovers_cpr_and_cmd(discovered, tmp_path):
    result = runner.invoke(
        app, ["verify", str(discovered / "circuit.json"), "--n-pairs", "10", "--out", str(tmp_path),
              "--scores", str(discovered / "edges.json")],
    )  # fmt: skip
    assert result.exit_code == 0, _text(result)
    mib = json.loads((tmp_path / "verify.json").read_text())["mib"]
    found = read_json(discovered / "circuit.json").graph["mib"]
    assert mib["ranked"] == "edges.json" and mib["sizes"] == found["sizes"]
    assert mib["cpr"] == pytest.approx(found["cpr"], abs=1e-9)
    assert mib["cmd"] == pytest.approx(found["cmd"], abs=1e-9)
    assert "CPR" in result.output and "CMD" in result.output


def test_edge_fractions_none_skips_mib_and_bad_ones_are_one_line(gpt2_dir, data, tmp_path):
    result = runner.invoke(
        app, ["discover", "--model", gpt2_dir, "--data", str(data), "--out", str(tmp_path),
              *SMALL, "--diagnose-subsets", "0", "--edge-fractions", "none", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, _text(result)
    assert json.loads(result.stdout)["cpr"] is None
    assert read_json(tmp_path / "circuit.json").graph["mib"] is None
    for bad in ("0.5,0.1", "a,b"):
        result = runner.invoke(
            app, ["discover", "--model", gpt2_dir, "--data", str(data), "--out", str(tmp_path),
                  "--edge-fractions", bad],
        )  # fmt: skip
        assert result.exit_code == 1 and "edge fractions" in _text(result).replace("-", " ")
        assert "Traceback" not in _text(result)


def test_no_bos_is_recorded_and_verify_reuses_it(gpt2_dir, data, tmp_path):
    found, checked = tmp_path / "found", tmp_path / "checked"
    args = ["discover", "--model", gpt2_dir, "--data", str(data), "--out", str(found), *SMALL]
    result = runner.invoke(app, [*args, "--no-bos"])
    assert result.exit_code == 0, _text(result)
    g = read_json(found / "circuit.json")
    assert g.graph["bos"] is False
    assert json.loads((found / "manifest.json").read_text())["config"]["bos"] is False
    result = runner.invoke(
        app, ["verify", str(found / "circuit.json"), "--n-pairs", "10", "--out", str(checked)]
    )
    assert result.exit_code == 0, _text(result)
    got = json.loads((checked / "verify.json").read_text())
    assert got["metric_clean"] == pytest.approx(g.graph["metric_clean"], abs=1e-9)
    result = runner.invoke(
        app,
        ["verify", str(found / "circuit.json"), "--n-pairs", "10", "--bos", "--out", str(checked)],
    )
    assert result.exit_code == 0, _text(result)
    with_bos = json.loads((checked / "verify.json").read_text())
    assert with_bos["metric_clean"] != pytest.approx(g.graph["metric_clean"], abs=1e-6)


def test_diagnose_command(gpt2_dir, data, tmp_path):
    result = runner.invoke(
        app,
        [
            "diagnose",
            "--model",
            gpt2_dir,
            "--data",
            str(data),
            "--subsets",
            "16",
            "--verified",
            "4",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, _text(result)
    got = json.loads((tmp_path / "diagnosis.json").read_text())
    assert len(got["verified"]) == 4 and "additive" in got["caveat"]
    # 16 subsets for 30 nodes leave no degrees of freedom: the bound is infinite, which
    # strict JSON writes as null and says so
    assert got["bound"] is None or got["bound"] >= 0
    if got["bound"] is None:
        assert "bound: inf written as null" in got["warnings"]


@pytest.mark.parametrize("fmt", ["dot", "json", "node-link", "graphml", "mib", "html"])
def test_export_formats_read_back(discovered, tmp_path, fmt):
    from circuitgraph import export

    target = tmp_path / f"c.{fmt}"
    result = runner.invoke(
        app, ["export", str(discovered / "circuit.json"), "--format", fmt, "--out", str(target)]
    )
    assert result.exit_code == 0, _text(result)
    g = read_json(discovered / "circuit.json")
    readers = {
        "json": export.read_json,
        "node-link": export.read_node_link,
        "graphml": export.read_graphml,
        "mib": export.read_mib,
    }
    if fmt in readers:
        back = readers[fmt](target)
        assert set(back.edges) == set(g.edges)
    elif fmt == "html":
        assert target.read_text().startswith("<!DOCTYPE html>")
        result = runner.invoke(
            app, ["export", str(discovered / "circuit.json"), "--format", "html", "--out",
                  str(target), "--scores", str(discovered / "edges.json")],
        )  # fmt: skip
        assert result.exit_code == 0, _text(result)
    else:
        assert target.read_text().startswith("digraph")


def test_listing_commands():
    assert runner.invoke(app, ["models"]).exit_code == 0
    assert "induction" in runner.invoke(app, ["tasks"]).output


# --------------------------------------------------------------------------------------
# Bad input: one sentence, exit 1 (2 for usage), no traceback, nothing half-written.
# --------------------------------------------------------------------------------------


def _fails(args, match: str, code: int = 1, out: Path | None = None):
    result = runner.invoke(app, args)
    text = _text(result)
    assert result.exit_code == code, text
    assert "Traceback" not in text
    assert re.search(match, text), text
    if out is not None and out.exists():
        assert not [p for p in out.iterdir() if p.name != ".circuitgraph-write-test"], list(
            out.iterdir()
        )
    return text


def test_unknown_model(tmp_path):
    _fails(
        ["nodes", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        "does not exist",
    )


def test_unreachable_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    _fails(
        ["nodes", "--model", "circuitgraph-test/not-cached", "--out", str(tmp_path)],
        "hub or the local cache",
    )


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ('{"clean": "w1 w2", "corrupt": "w1 w3", "answer": "w4"}\n', r"line 1.*wrong"),
        (
            '{"clean": "w1 w2", "corrupt": "w1 w3", "answer": "w4", "wrong": "w5"}\n{"clean": oops}\n',
            r"line 2",
        ),
        (
            '{"clean": "w1 w2", "corrupt": "w1", "answer": "w4", "wrong": "w5"}\n',
            r"line 1.*same token length",
        ),
        (
            '{"clean": "w1 w2", "corrupt": "w1 w3", "answer": "w4 w5", "wrong": "w5"}\n',
            r"line 1.*single token",
        ),
        ("", r"empty|no prompt pairs|none"),
    ],
)
def test_bad_data_files(gpt2_dir, tmp_path, rows, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(rows)
    out = tmp_path / "out"
    _fails(
        ["discover", "--model", gpt2_dir, "--data", str(f), "--out", str(out), *SMALL],
        match,
        out=out,
    )


def test_prompt_longer_than_context(gpt2_dir, tmp_path):
    long = " ".join(["w1"] * 40)
    f = _jsonl(
        tmp_path / "long.jsonl", [{"clean": long, "corrupt": long, "answer": "w2", "wrong": "w3"}]
    )
    _fails(
        ["nodes", "--model", gpt2_dir, "--data", str(f), "--out", str(tmp_path / "o")], "context"
    )


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("--task", "no-such-task", "task"),
        ("--method", "magic", "method"),
        ("--metric", "accuracy", "metric"),
    ],
)
def test_unknown_names(gpt2_dir, data, tmp_path, option, value, match):
    extra = [] if option == "--task" else ["--data", str(data)]
    _fails(["nodes", "--model", gpt2_dir, *extra, option, value, "--out", str(tmp_path)], match)


def test_non_finite_metric(tmp_path, data):
    import torch
    from transformers import GPT2LMHeadModel

    from ..conftest import _save_gpt2

    _save_gpt2(str(tmp_path / "m"))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "m"))
    with torch.no_grad():
        hf.transformer.ln_f.weight[:] = float("nan")  # every logit NaN
    hf.save_pretrained(str(tmp_path / "m"))
    _fails(
        [
            "nodes",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
        ],
        "NaN or infinite",
    )


def test_unwritable_output_directory(gpt2_dir, data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(
        ["nodes", "--model", gpt2_dir, "--data", str(data), "--out", str(blocker / "sub")],
        "cannot write to the output directory",
    )


def test_usage_errors_exit_2(tmp_path):
    _fails(["nodes", "--n-pairs", "many"], "n-pairs", code=2)
    _fails(["export", str(tmp_path / "c.json"), "--format", "bmp"], "format", code=1)


def test_task_and_data_together_is_refused(gpt2_dir, data, tmp_path):
    _fails(
        [
            "nodes",
            "--model",
            gpt2_dir,
            "--task",
            "induction",
            "--data",
            str(data),
            "--out",
            str(tmp_path),
        ],
        "both",
    )
