"""The installed console script and the listing commands."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from circuitgraph.cli.app import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("models", "tasks"):
        assert command in result.output


def test_models_lists_zoo_models():
    from circuitgraph import zoo

    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for m in zoo.list_models():
        assert f"zoo:{m.name}" in result.output


def test_tasks_lists_builtin_tasks():
    from circuitgraph.tasks import TASKS

    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in TASKS:
        assert name in result.output


@pytest.mark.parametrize("args", [["--help"], ["models"], ["tasks"]])
def test_installed_console_script(args):
    exe = shutil.which("circuitgraph") or str(
        __import__("pathlib").Path(sys.executable).parent / "circuitgraph"
    )
    out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_command_is_a_usage_error_without_traceback():
    exe = shutil.which("circuitgraph") or str(
        __import__("pathlib").Path(sys.executable).parent / "circuitgraph"
    )
    out = subprocess.run([exe, "frobnicate"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "frobnicate" in out.stderr


def test_a_device_torch_does_not_know_is_one_line_not_a_traceback():
    exe = shutil.which("circuitgraph") or str(
        __import__("pathlib").Path(sys.executable).parent / "circuitgraph"
    )
    args = [exe, "nodes", "--device", "bogus", "--n-pairs", "2", "--quiet"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "'bogus'" in out.stderr
