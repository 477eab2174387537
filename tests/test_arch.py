"""The one module that spells hook names, and the layering of the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from circuitgraph.arch import Arch, hooks
from circuitgraph.errors import ConfigError
from circuitgraph.model import ModelInfo
from circuitgraph.nodes import Node

SEQUENTIAL = Arch(ModelInfo("m", 3, 4, 2, 32, 8, 64, "RMS", True, True, False, 50, 32))

ROOT = Path(__file__).parent.parent
#: a string literal that names a hook point ("blocks.0.attn.hook_q", "hook_embed", ...)
HOOK_LITERAL = re.compile(r"""["'][\w.{}\[\]]*hook_\w+""")


def test_no_module_but_arch_spells_a_hook_name() -> None:
    offenders = []
    for path in [*ROOT.glob("circuitgraph/**/*.py"), *ROOT.glob("cli/*.py")]:
        if path.name == "arch.py" and path.parent.name == "circuitgraph":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if HOOK_LITERAL.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "hook names spelled outside circuitgraph/arch.py:\n" + "\n".join(
        offenders
    )


def test_the_grep_would_catch_a_hook_name() -> None:
    assert HOOK_LITERAL.search('name = f"blocks.{layer}.attn.hook_q"')
    assert HOOK_LITERAL.search("store['hook_embed']")
    assert not HOOK_LITERAL.search("def _hook(act, hook):")


def test_no_import_circle_in_the_package() -> None:
    import grimp  # installed with import-linter (the dev extra)
    import networkx as nx

    graph = grimp.build_graph("circuitgraph", "cli")
    edges = [(m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m)]
    cycles = list(nx.simple_cycles(nx.DiGraph(edges)))
    assert not cycles, f"import circles: {cycles[:3]}"


def test_sites_of_every_kind() -> None:
    a = SEQUENTIAL
    assert a.node_site(Node("head", 1, 2)).name == hooks.z(1)
    assert a.node_site(Node("neuron", 0, 7)).index == 7
    assert a.target_site(Node("logits")).residual is None
    assert a.target_site(Node("mlp", 1)).name == a.grad_hook("mlp", 1) == hooks.mlp_in(1)
    assert a.norm_input_hook("q", 2) == hooks.resid_pre(2)
    assert a.norm_input_hook("mlp", 2) == hooks.resid_mid(2)
    assert a.residual_writes([1]) == ((1, hooks.attn_out(1)), (1, hooks.mlp_out(1)))
    assert a.source_hook(Node("input")) == hooks.resid_pre(0)
    with pytest.raises(ConfigError, match="edge source"):
        a.source_hook(Node("q", 0, 0))
    with pytest.raises(ConfigError, match="edge target"):
        a.target_site(Node("head", 0, 0))
