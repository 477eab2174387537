"""The flat API: one import reaches the whole pipeline, and the README's example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import circuitgraph as cg

README = Path(__file__).parent.parent / "README.md"


def _readme_python() -> str:
    text = README.read_text()
    start = text.index("From Python, one import is enough:")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_example_uses_only_cg() -> None:
    code = _readme_python()
    imports = [ln for ln in code.splitlines() if re.match(r"\s*(import|from)\s", ln)]
    assert imports == ["import circuitgraph as cg"]


def test_the_readme_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(_readme_python(), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "exact patching of 10 nodes" in out and "# Circuit for" in out
    assert cg.read(tmp_path / "circuit.json").graph["n_edges"] > 0


def test_every_public_name_resolves() -> None:
    for name in cg.__all__:
        assert getattr(cg, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cg.nope  # noqa: B018


def test_importing_the_package_imports_no_torch() -> None:
    code = "import sys, circuitgraph; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_discover_is_the_function_even_after_the_module_is_imported() -> None:
    import circuitgraph.pipeline  # noqa: F401

    assert callable(cg.discover) and cg.discover.__module__ == "circuitgraph.pipeline"
