"""Researcher ergonomics (issue 13 item 5): progress lines in a log, --layers, reusing a
screening with `edges --nodes`, what the manifest records, and tables that say their order."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from circuitgraph.cli.app import app
from circuitgraph.cli.common import PlainProgress
from circuitgraph.gguf import file_sha256
from circuitgraph.nodes import Node
from circuitgraph.scores import NodeScores

runner = CliRunner()
ZOO = "zoo:attn-only-2l"  # two layers, two heads: every command runs in about a second
FAST = ["--model", ZOO, "--task", "induction", "--n-pairs", "6"]


def _run(args: list[str], **env: str):
    return runner.invoke(app, args, env={"CIRCUITGRAPH_PROGRESS_EVERY": "10", **env})


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CIRCUITGRAPH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def screened(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nodes")
    result = _run(["nodes", *FAST, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


# ---- progress off a terminal ---------------------------------------------------------------


def test_plain_progress_throttles_lines_and_ends_each_stage_once():
    now = [0.0]
    lines: list[str] = []
    p = PlainProgress(lines.append, every=10.0, clock=lambda: now[0])
    step = p.stage("screen nodes", 30)
    for t, done in ((4.0, 3), (12.0, 9), (15.0, 3), (40.0, 15)):
        now[0] = t
        step(done)
    now[0] = 41.0
    other = p.stage("edges", 0)  # an unknown total: counts, no percentage
    now[0] = 52.0
    other(7)
    step(1)  # a late report of a finished stage prints nothing
    now[0] = 60.0
    p.close()
    p.close()
    assert lines == [
        "screen nodes: started (30 units)",
        "screen nodes: 40% (12/30), 12 s elapsed, ~18 s left",
        "screen nodes: done (30/30) in 40 s",
        "edges: started",
        "edges: 7 done, 11 s elapsed",
        "edges: done (7 done) in 19 s",
    ]


def test_a_command_off_a_terminal_prints_progress_lines_and_quiet_prints_none(tmp_path):
    # CliRunner's stderr is not a terminal, like a log under nohup; interval 0: every update
    loud = _run(["nodes", *FAST, "--out", str(tmp_path / "a")], CIRCUITGRAPH_PROGRESS_EVERY="0")
    assert loud.exit_code == 0, loud.output
    lines = loud.stderr.splitlines()
    assert lines[0] == "atp* nodes: started (6 units)"
    assert re.fullmatch(r"atp\* nodes: done \(6/6\) in \d+ s", lines[-1])
    assert all(line.startswith("atp* nodes: ") for line in lines)
    quiet = _run(["nodes", *FAST, "--out", str(tmp_path / "b"), "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_a_bad_progress_interval_is_one_line(tmp_path):
    result = _run(["nodes", *FAST, "--out", str(tmp_path)], CIRCUITGRAPH_PROGRESS_EVERY="soon")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: expected CIRCUITGRAPH_PROGRESS_EVERY to be a number of seconds but got 'soon'"
    ]


# ---- tables say what they are ordered by ----------------------------------------------------


def _printed_rows(text: str) -> list[tuple[str, float, float]]:
    rows = re.findall(r"^\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)$", text, flags=re.M)
    return [(name, float(s), float(a)) for name, s, a in rows]


@pytest.mark.parametrize(
    ("method", "label"),
    [("atp*", "E[(1/(L-1)) sum_l |I_l|] (GradDrop)"), ("exact", "|signed|"), ("atp", "|E I|")],
)
def test_the_node_table_names_its_order_and_is_in_that_order(tmp_path, method, label):
    result = _run(["nodes", *FAST, "--method", method, "--top", "8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"top 8 by score = {label}, highest first" in result.stdout
    rows = _printed_rows(result.stdout)
    assert len(rows) == 8
    saved = NodeScores.from_json(json.loads((tmp_path / "nodes.json").read_text()))
    assert [r[0] for r in rows] == [n.id for n in saved.top_k(8)]
    scores = [r[2] for r in rows]
    assert scores == sorted(scores, reverse=True)
    if method == "atp*":  # GradDrop's order is not the order of |signed| here
        by_signed = sorted(saved.nodes, key=lambda n: -abs(saved[n][0]))[:8]
        assert [n.id for n in by_signed] != [r[0] for r in rows]


def test_the_edge_table_names_its_order(tmp_path):
    result = _run(["edges", *FAST, "--top", "5", "--out", str(tmp_path), "--json"])
    summary = json.loads(result.stdout)
    assert summary["ranked_by"] == "|E Î|"
    sizes = [row["score"] for row in summary["top"]]
    assert sizes == sorted(sizes, reverse=True)
    assert all(abs(r["score"] - abs(r["signed"])) < 1e-12 for r in summary["top"])
    text = _run(["edges", *FAST, "--top", "5", "--out", str(tmp_path)]).stdout
    assert "top 5 by score = |E Î|, highest first" in text


def test_the_diagnose_table_names_its_order(tmp_path):
    args = ["diagnose", *FAST, "--subsets", "40", "--verified", "2", "--out", str(tmp_path)]
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "top 10 of 14 unverified nodes by the upper bound, largest first:" in result.stdout
    upper = [float(line.split()[-1]) for line in result.stdout.splitlines()[3:13]]
    assert len(upper) == 10 and upper == sorted(upper, reverse=True)
    assert all(math.isfinite(u) for u in upper)


# ---- --layers -------------------------------------------------------------------------------


def test_layers_restrict_the_screened_nodes(tmp_path):
    result = _run(["nodes", *FAST, "--layers", "1", "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    saved = NodeScores.from_json(json.loads((tmp_path / "nodes.json").read_text()))
    assert {n.layer for n in saved.nodes} == {1}
    assert len(saved) == 8  # 2 heads x (head, q, k, v)
    both = _run(["nodes", *FAST, "--layers", "0", "--layers", "1", "--out", str(tmp_path), "-q"])
    assert both.exit_code == 0
    assert {n.layer for n in NodeScores.from_json(json.loads((tmp_path / "nodes.json").read_text())).nodes} == {0, 1}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("1-x", 2, "expected layers as numbers and ranges like 0-3,7 but got '1-x'"),
        ("3-1", 2, "expected a layer range from low to high"),
        ("0,5", 1, "expected layers between 0 and 1 (the model has 2) but got 5"),
    ],
)
def test_bad_layers_are_one_line(tmp_path, spec, code, message):
    result = _run(["nodes", *FAST, "--layers", spec, "--out", str(tmp_path / "x")])
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "x").exists()


def test_discover_screens_only_the_given_layers_and_records_its_run(tmp_path):
    result = _run(
        ["discover", *FAST, "--layers", "1", "--keep-nodes", "4", "--verify-k", "2",
         "--diagnose-subsets", "0", "--edge-fractions", "none", "--out", str(tmp_path), "-q"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    layers = {
        int(row.split(",")[3]) for row in (tmp_path / "nodes.csv").read_text().splitlines()[1:]
    }
    assert layers == {1}
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["config"]["layers"] == [1]
    assert (m["n_pairs"], m["device"], m["dtype"], m["bos"]) == (6, "cpu", "float32", True)
    assert len(m["model_files"]["sha256"]) == 64 and m["command_line"][1] == "discover"


# ---- edges --nodes / --kinds ------------------------------------------------------------------


def test_edges_reuse_a_screening_and_match_screening_again(screened, tmp_path):
    again = _run(["edges", *FAST, "--keep-nodes", "5", "--out", str(tmp_path / "a"), "-q"])
    reused = _run(
        ["edges", *FAST, "--nodes", str(screened / "nodes.json"), "--keep-nodes", "5",
         "--out", str(tmp_path / "b")],
        CIRCUITGRAPH_PROGRESS_EVERY="0",
    )  # fmt: skip
    assert again.exit_code == 0 and reused.exit_code == 0, reused.output
    assert "screen nodes" not in reused.stderr and "eap edges: started" in reused.stderr
    a, b = ((tmp_path / d / "edges.json").read_text() for d in "ab")
    assert json.loads(a)["edges"] == json.loads(b)["edges"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["config"]["nodes"] == str(screened / "nodes.json")


def test_edges_kinds_and_layers_choose_the_kept_nodes(screened, tmp_path):
    result = _run(
        ["edges", *FAST, "--nodes", str(screened / "nodes.json"), "--kinds", "head",
         "--layers", "1", "--out", str(tmp_path), "--json"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    edges = json.loads((tmp_path / "edges.json").read_text())["edges"]
    sources = {e["id"].split("->")[0] for e in edges}
    targets = {e["id"].split("->")[1] for e in edges}
    assert sources == {"input", "a1.h0", "a1.h1"}  # kept heads, no layer-0 head
    assert all(t == "logits" or t.startswith("a1.") for t in targets)  # a kept head's q/k/v
    screening = _run(
        ["edges", *FAST, "--keep-nodes", "3", "--kinds", "q,k", "--out", str(tmp_path), "-q"]
    )
    assert screening.exit_code == 0
    targets = {e["id"].split("->")[1] for e in json.loads((tmp_path / "edges.json").read_text())["edges"]}  # fmt: skip
    assert targets - {"logits"} and all(t.endswith(("<q>", "<k>")) for t in targets - {"logits"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metric", "logprob"], "was made with 'logit_diff'; pass --metric logit_diff"),
        (["--task", "ioi"], "expected a screening of the task 'ioi' but"),
        (["--model", "zoo:gpt2-4l"], "expected a screening of this model (zoo:gpt2-4l, files"),
    ],
)
def test_a_screening_of_something_else_is_refused(screened, tmp_path, monkeypatch, extra, message):
    from circuitgraph.cli import common

    if "--model" not in extra:  # a wrong task or metric is refused before loading the model
        monkeypatch.setattr(common, "load", lambda *a: pytest.fail("the model was loaded"))
    args = ["edges", *FAST, "--nodes", str(screened / "nodes.json"), "--out", str(tmp_path / "x")]
    result = _run(args + extra)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def _library_screening(path: Path, ids: list[str]) -> Path:
    nodes = tuple(Node.parse(i) for i in ids)
    signed = torch.arange(len(ids), dtype=torch.float64)
    scores = NodeScores(nodes, signed, signed.abs(), "atp*", "logit_diff", 4)
    path.write_text(json.dumps(scores.to_json()))
    return path


def test_a_screening_without_its_model_record_is_checked_by_node_names(tmp_path):
    own = _library_screening(tmp_path / "own.json", ["a0.h1", "a1.h0", "a1.h1<q>"])
    ok = _run(["edges", *FAST, "--nodes", str(own), "--out", str(tmp_path / "a"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert "does not record its model and task" in json.loads(ok.stdout)["notes"][0]
    foreign = _library_screening(tmp_path / "foreign.json", ["a3.h0", "m2"])
    bad = _run(["edges", *FAST, "--nodes", str(foreign), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1
    assert "holds a3.h0, m2; it was screened on another model" in bad.stderr


def test_kinds_without_a_screening_is_one_line(tmp_path):
    result = _run(["edges", *FAST, "--kinds", "head", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "expected --kinds or --layers together with --keep-nodes or --nodes" in result.stderr


# ---- the manifest ---------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", ["nodes", "edges"])
def test_the_manifest_records_the_run(tmp_path, command):
    from circuitgraph import zoo

    args = [command, *FAST, "--no-bos", "--out", str(tmp_path), "-q"]
    assert _run(args).exit_code == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["command"] == command and m["model"] == ZOO and m["data"] == "induction"
    assert (m["n_pairs"], m["device"], m["dtype"], m["bos"]) == (6, "cpu", "float32", False)
    assert m["command_line"] == ["circuitgraph", *args]
    folder = zoo.model_path("attn-only-2l")
    files = m["model_files"]["files"]
    assert {"model.safetensors", "tl_native_config.json", "tokenizer.json"} <= set(files)
    assert all(files[name] == _sha256(folder / name) for name in files)
    lines = "".join(f"{name}\t{files[name]}\n" for name in sorted(files))
    assert m["model_files"]["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    versions = m["versions"]
    for package in ("circuitgraph", "torch", "transformers", "transformer-lens", "networkx"):
        assert versions[package] and versions[package] != "not installed"


def test_file_hashes_are_memoised_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITGRAPH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    assert file_sha256(f) == _sha256(f)
    memo_file = tmp_path / "cache" / "sha256.json"
    memo = json.loads(memo_file.read_text())
    memo[str(f.resolve())]["sha256"] = "memoised"
    memo_file.write_text(json.dumps(memo))
    assert file_sha256(f) == "memoised"  # not read again
    f.write_bytes(b"other weights")  # new size and time: hashed again
    os.utime(f, ns=(1, 1))
    assert file_sha256(f) == _sha256(f)
