"""``circuitgraph check``: every verdict passes where the library is right, and each check
fails when the claim it tests is broken on purpose."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from typer.testing import CliRunner

import circuitgraph as cg
from circuitgraph.arch import _CACHE, Arch, HookSite
from circuitgraph.cli.app import app
from circuitgraph.nodes import Node

from .families import save_family

CHECKS = [
    "exact nodes vs independent forward",
    "AtP vs finite difference",
    "QK fix vs exact (q and k node)",
    "EAP vs finite difference of exact edges",
    "non-linearity along the patch",
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return save_family("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama(llama_dir):
    return cg.load_model(llama_dir, device="cpu")[0]


def test_every_check_passes_on_a_correct_model(llama) -> None:
    verdicts = cg.check(llama)
    assert [v.check for v in verdicts] == CHECKS
    for v in verdicts:
        assert v.status in ("pass", "warn"), v.line()
        assert "\n" not in v.line()
    assert all(v.error is not None and v.error < 5e-3 for v in verdicts[:4])


class _ShiftedHeads(Arch):
    """A description that puts every head's node one head over: exact patching then
    patches the wrong slice, which only the independent forward can notice."""

    def node_site(self, node: Node) -> HookSite:
        site = super().node_site(node)
        if node.kind != "head" or site.index is None:
            return site
        return HookSite(site.name, (site.index + 1) % self.info.n_heads, site.split)


def test_a_misplaced_hook_fails_the_exact_check(llama) -> None:
    arch = Arch.of(llama)
    _CACHE[llama] = _ShiftedHeads(**{f.name: getattr(arch, f.name) for f in fields(arch)})
    try:
        verdict = cg.check(llama)[0]
    finally:
        _CACHE[llama] = arch
    assert verdict.status == "fail" and verdict.error is not None and verdict.error > 0.01


def test_a_wrong_gradient_fails_the_atp_check(llama, monkeypatch) -> None:
    from circuitgraph.attribution import sites

    real = sites.dot_effects

    def doubled(kind, delta, grad):  # AtP off by a factor of two on every node
        per_pos, whole = real(kind, delta, grad)
        return 2 * per_pos, 2 * whole

    monkeypatch.setattr(sites, "dot_effects", doubled)
    verdicts = {v.check: v for v in cg.check(llama)}
    assert verdicts["AtP vs finite difference"].status == "fail"
    assert verdicts["exact nodes vs independent forward"].status == "pass"


def test_the_command_prints_one_verdict_per_line(llama_dir) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["check", "--model", llama_dir])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(CHECKS) + 1 and lines[-1].startswith(llama_dir)
    data = json.loads(runner.invoke(app, ["check", "--model", llama_dir, "--json"]).stdout)
    assert [c["check"] for c in data["checks"]] == CHECKS


def test_a_model_refused_at_load_is_one_line(tmp_path) -> None:
    path = save_family("falcon_gqa", tmp_path / "m")
    result = CliRunner().invoke(app, ["check", "--model", path])
    assert result.exit_code == 1
    assert "new decoder architecture" in result.output and "Traceback" not in result.output
