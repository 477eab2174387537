"""Fault injection: every row of ``faults.FAULTS`` through CliRunner, the console-script
subset and every signal through a subprocess. Each must give its exit status, exactly one
line on stderr (its message), no traceback, no temporary or half-written file, no empty
folder left behind, and keep the files it had finished."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from circuitgraph.cli.app import app
from circuitgraph.cli.guard import PROBE

from .faults import FAULTS, README_END, README_START, Case, Fault, inject, readme_table

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("fault_driver.py")
HAS_DOT = shutil.which("dot") is not None


def _skip_unless_meaningful(fault: Fault) -> None:
    if fault.needs_cpu_only and torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    if "circuit.svg" in fault.kept and fault.signal is None and not HAS_DOT:
        pytest.skip("drawing needs Graphviz dot")


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())}


def check(fault: Fault, case: Case, code: int, stdout: str, stderr: str, empty: set[Path]) -> None:
    """Everything a failure must and must not leave."""
    assert code == fault.code, f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    at = 0
    for fragment in fault.fragments():
        found = lines[0].find(fragment, at)
        assert found >= 0, f"{fragment!r} not in {lines[0]!r}"
        at = found + len(fragment)
    assert stdout.strip() == "", stdout  # a failed --json run prints no half summary
    left = [p for p in case.tmp.rglob("*") if p.name.endswith(".tmp") or p.name == PROBE]
    assert not left, left
    assert _snapshot(case.tmp) <= empty, _snapshot(case.tmp) - empty
    if fault.kept:
        assert sorted(p.name for p in case.out.iterdir()) == sorted(fault.kept)
        for name in fault.kept:
            data = (case.out / name).read_bytes()
            assert data, name
            if name.endswith(".json"):
                json.loads(data, parse_constant=_no_constants)  # complete and strict
    else:
        assert not case.out.parent.exists(), list(case.out.parent.rglob("*"))


def _no_constants(name: str) -> None:
    raise AssertionError(f"{name} in strict JSON")


def test_the_table_has_at_least_25_distinct_faults():
    names = [f.name for f in FAULTS]
    assert len(set(names)) == len(names) >= 25
    assert {f.code for f in FAULTS} == {1, 2, 130, 143}


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.signal is None], ids=lambda f: f.name)
def test_fault_through_cli_runner(fault, tmp_path):
    _skip_unless_meaningful(fault)
    case = Case(tmp_path)
    args = fault.args(case)
    empty = _snapshot(tmp_path)
    with inject(fault.inject):
        result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    check(fault, case, result.exit_code, result.stdout, result.stderr, empty)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CIRCUITGRAPH_DEBUG"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _console_script() -> str:
    return shutil.which("circuitgraph") or str(Path(sys.executable).parent / "circuitgraph")


@pytest.mark.parametrize(
    "fault", [f for f in FAULTS if f.shell and f.signal is None], ids=lambda f: f.name
)
def test_fault_through_the_console_script(fault, tmp_path):
    _skip_unless_meaningful(fault)
    case = Case(tmp_path)
    args = fault.args(case)
    empty = _snapshot(tmp_path)
    command = [_console_script()] if fault.inject is None else [sys.executable, str(DRIVER)]
    env = _env(CG_FAULT=fault.inject or "")
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)
    check(fault, case, done.returncode, done.stdout, done.stderr, empty)


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.signal], ids=lambda f: f.name)
def test_signal_during_discover(fault, tmp_path):
    """SIGINT / SIGTERM at a pause point: exit 130 / 143, one line, nothing half-done."""
    case = Case(tmp_path)
    args = fault.args(case)
    empty = _snapshot(tmp_path)
    marker = tmp_path / "paused"
    env = _env(CG_FAULT=fault.inject or "", CG_FAULT_MARKER=str(marker))
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=60)
        marker.unlink()
        proc.send_signal(signal.SIGINT if fault.signal == "INT" else signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    check(fault, case, proc.returncode, stdout, stderr, empty)


def test_debug_shows_the_traceback_of_an_unexpected_error(tmp_path):
    case = Case(tmp_path)
    fault = next(f for f in FAULTS if f.name == "internal-error")
    with inject(fault.inject):
        result = runner.invoke(app, ["--debug", *fault.args(case)])
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "boom"
    assert not case.out.parent.exists()  # cleaned up before the traceback


def test_readme_table_is_the_fault_table():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(README_START), readme.index(README_END) + len(README_END)
    assert readme[start:end] == readme_table(), "regenerate it: python -m tests.cli.faults"


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, circuitgraph.cli.app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
