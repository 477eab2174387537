"""Data parallel under ``torchrun`` (gloo on CPUs): the same numbers as one process, and only
rank 0 writes files.

One ``discover`` run covers every estimator the issue names: AtP* node scores (nodes.csv),
exact node effects (the verified top nodes), EAP edge scores (edges.json), exact edge
effects (the circuit's edges) and the faithfulness of the circuit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from circuitgraph.cli.app import app

ARGS = [
    "discover", "--model", "zoo:attn-only-2l", "--task", "induction", "--n-pairs", "12",
    "--batch-size", "4", "--keep-nodes", "6", "--verify-k", "4", "--diagnose-subsets", "24",
    "--edge-top-n", "6", "--device", "cpu", "--quiet",
]  # fmt: skip
# Logs every file a process moves into place (atomic writes end in os.replace), by rank.
SITECUSTOMIZE = """
import os
_replace = os.replace
def _logged(src, dst, *args, **kwargs):
    with open(os.path.join({log!r}, "rank" + os.environ.get("RANK", "none") + ".log"), "a") as f:
        f.write(os.fspath(dst) + "\\n")
    return _replace(src, dst, *args, **kwargs)
os.replace = _logged
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("dist")
    single, multi, logs = root / "single", root / "multi", root / "logs"
    logs.mkdir()
    result = CliRunner().invoke(app, [*ARGS, "--out", str(single)])
    assert result.exit_code == 0, result.output
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE.format(log=str(logs)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), *sys.path])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "circuitgraph", *ARGS, "--out", str(multi)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return single, multi, logs


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {r["node"] if "node" in r else r["edge"]: r for r in csv.DictReader(f)}


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def test_node_scores_equal_one_process(runs) -> None:
    single, multi, _ = runs
    one, two = _rows(single / "nodes.csv"), _rows(multi / "nodes.csv")
    assert one.keys() == two.keys()
    for node, row in one.items():
        for col in ("signed", "score", "exact"):  # atp* estimates; exact where verified
            if row[col]:
                assert _close(float(row[col]), float(two[node][col])), (node, col)
    assert sum(1 for r in one.values() if r["exact"]) == 4


def test_edge_scores_and_exact_effects_equal_one_process(runs) -> None:
    single, multi, _ = runs
    one = json.loads((single / "edges.json").read_text())
    two = json.loads((multi / "edges.json").read_text())
    assert [e["id"] for e in one["edges"]] == [e["id"] for e in two["edges"]]
    for a, b in zip(one["edges"], two["edges"], strict=True):
        assert _close(a["signed"], b["signed"]), a["id"]
    c1 = json.loads((single / "circuit.json").read_text())
    c2 = json.loads((multi / "circuit.json").read_text())
    exact1 = {(e["source"], e["target"]): e.get("exact") for e in c1["edges"]}
    exact2 = {(e["source"], e["target"]): e.get("exact") for e in c2["edges"]}
    assert exact1.keys() == exact2.keys() and any(v is not None for v in exact1.values())
    for k, v in exact1.items():
        assert (v is None) == (exact2[k] is None) and (v is None or _close(v, exact2[k])), k
    assert _close(c1["graph"]["faithfulness"], c2["graph"]["faithfulness"])
    assert _close(c1["graph"]["diagnostic_bound"], c2["graph"]["diagnostic_bound"])


def test_only_rank_zero_writes(runs) -> None:
    _, multi, logs = runs
    written = {
        rank: [ln for ln in (logs / f"rank{rank}.log").read_text().splitlines() if str(multi) in ln]
        if (logs / f"rank{rank}.log").exists()
        else []
        for rank in ("0", "1")
    }
    assert any(ln.endswith("circuit.json") for ln in written["0"])
    assert written["1"] == []
