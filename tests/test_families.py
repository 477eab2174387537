"""Every decoder family against the independent reference (issue 12): each column of the
conformance matrix (docs/architectures.md) is a test here, on a tiny random model of each
family built from a config inside the test, loaded from disk like a user's model.

The comparisons live in ``tests/conformance.py`` (shared with
``benchmarks/conformance.py``, which writes the matrix). The default run compares edges of
every (source kind, target kind) pair, parallel blocks included; ``-m slow`` compares every
edge of every family.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import circuitgraph as cg
from circuitgraph.arch import _CACHE
from circuitgraph.attribution import EdgeSet
from circuitgraph.errors import ConfigError, ModelLoadError, ModelStateError

from .conformance import CAPABILITIES, EDGE_CHECKS, TOL, Loaded, check, load, node_list
from .families import FAMILIES, save_family

REFUSED = {"falcon_gqa": "new decoder architecture"}  # refused at load: TL mis-splits it
SUPPORTED = sorted(set(FAMILIES) - set(REFUSED))
COLUMNS = [c for c in CAPABILITIES if c != "discover"]


@pytest.fixture(scope="session")
def family_cache() -> dict[str, Loaded]:
    return {}


@pytest.fixture
def family(request: pytest.FixtureRequest, family_cache, tmp_path_factory) -> Loaded:
    """The family named by the test's ``name`` parameter, loaded once per session."""
    name = request.node.callspec.params["name"]
    if name not in family_cache:
        family_cache[name] = load(name, tmp_path_factory.mktemp(name))
    return family_cache[name]


@pytest.mark.parametrize("capability", COLUMNS)
@pytest.mark.parametrize("name", SUPPORTED)
def test_capability_matches_the_reference(name: str, capability: str, family: Loaded) -> None:
    assert check(family, capability) <= TOL[capability]


@pytest.mark.slow
@pytest.mark.parametrize("capability", sorted(EDGE_CHECKS))
@pytest.mark.parametrize("name", SUPPORTED)
def test_every_edge_matches_the_reference(name: str, capability: str, family: Loaded) -> None:
    assert check(family, capability, every=True) <= TOL[capability]


@pytest.mark.parametrize("name", SUPPORTED)
def test_no_exactly_zero_qk_score_where_exact_patching_is_not(name: str, family: Loaded) -> None:
    # OPT and GPT-J fire their pattern hook off the autograd path: reading its gradient gave
    # every q/k node exactly 0 under the QK fix.
    nodes = [n for n in node_list(family.info, positions=True) if n.kind in ("q", "k")]
    star = cg.attribute_nodes(family.model, family.pairs, method="atp*", nodes=nodes).signed
    exact = cg.attribute_nodes(family.model, family.pairs, method="exact", nodes=nodes).signed
    moved = exact.abs() > 1e-6 * float(exact.abs().max())
    assert moved.sum() >= 4
    assert bool((star[moved] != 0).all()), [n.id for n, m in zip(nodes, moved, strict=True) if m]


# --------------------------------------------------------------------------------------
# Parallel blocks: the edge set, and MIB's
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt_neox", "gpt2"])
def test_edge_set_agrees_with_mibs(name: str, family: Loaded) -> None:
    from circuitgraph.export.mib import _mib_full_edges
    from circuitgraph.graph import model_attrs

    ours = {e.id for e in EdgeSet.full(family.info).edges()}
    assert ours == set(_mib_full_edges(model_attrs(family.info)))
    inside = {"a0.h0->m0", "a1.h3->m1"}
    assert (inside <= ours) == (not family.info.parallel_blocks)


@pytest.mark.parametrize("name", ["gpt_neox"])
def test_an_edge_a_parallel_block_lacks_is_refused(name: str, family: Loaded) -> None:
    model, info = family.model, family.info
    head, mlp = cg.Node("head", 0, 1), cg.Node("mlp", 0)
    sequential = EdgeSet.between([cg.Node("input"), head], [mlp])  # built as if sequential
    with pytest.raises(ConfigError, match="in parallel"):
        cg.attribute_edges(model, family.pairs, method="eap", candidates=sequential)
    with pytest.raises(ConfigError, match="in parallel"):
        cg.patch_edges(model, family.pairs, [cg.Edge(head, mlp)])
    assert not EdgeSet.between([head], [mlp], info.parallel_blocks).valid.any()


# --------------------------------------------------------------------------------------
# Refusals: one sentence each, saying what is unsupported and what still works
# --------------------------------------------------------------------------------------


def test_falcon_with_the_new_decoder_architecture_is_refused_at_load(tmp_path) -> None:
    from typer.testing import CliRunner

    from circuitgraph.cli.app import app

    path = save_family("falcon_gqa", tmp_path / "m")
    with pytest.raises(ModelLoadError, match=REFUSED["falcon_gqa"]) as err:
        cg.load_model(path, device="cpu")
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(app, ["nodes", "--model", path, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "new decoder architecture" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["mixtral"])
def test_neurons_of_a_mixture_of_experts_are_refused(name: str, family: Loaded) -> None:
    model, info = family.model, family.info
    for call in (
        lambda: cg.enumerate_nodes(info, ["neuron"]),
        lambda: cg.attribute_nodes(model, family.pairs, method="atp", kinds=("neuron",)),
        lambda: cg.patch_nodes(model, family.pairs, [cg.Node("neuron", 0, 3)]),
    ):
        with pytest.raises(ModelStateError, match="routes each token to experts") as err:
            call()
        assert "kind 'mlp'" in str(err.value) and "\n" not in str(err.value)
    assert cg.attribute_nodes(model, family.pairs, method="atp", kinds=("mlp",)).signed.ne(0).any()


@pytest.mark.parametrize("name", ["gpt2"])
def test_an_attention_the_qk_fix_cannot_recompute_is_refused(name: str, family: Loaded) -> None:
    # a model whose scores are not scale·q·k as described (here: a wrong scale) refuses the
    # QK fix, in one sentence naming what still works; AtP and EAP still run
    model, pairs = family.model, family.pairs
    arch = family.arch
    _CACHE[model] = replace(arch, attn_scale=tuple(2 * s for s in arch.attn_scale))
    try:
        with pytest.raises(ModelStateError, match="node method 'atp'") as err:
            cg.attribute_nodes(model, pairs, method="atp*", kinds=("q", "k"))
        assert "--node-method atp" in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ModelStateError, match="edge method 'eap'"):
            cg.attribute_edges(model, pairs, method="atp*")
        assert cg.attribute_nodes(model, pairs, method="atp", kinds=("q", "k")).signed.ne(0).any()
        assert cg.attribute_edges(model, pairs, method="eap").signed.ne(0).any()
    finally:
        _CACHE[model] = arch


def test_a_gradient_that_never_arrives_is_refused_not_read_as_zero() -> None:
    from circuitgraph.attribution.sites import site_grad

    g = torch.ones(1)
    assert site_grad({"x": g}, "x", cut=False) is g
    assert site_grad({}, "x", cut=True) is None  # below a GradDrop cut: exactly 0
    with pytest.raises(ModelStateError, match="silent zero"):
        site_grad({}, "x", cut=False)


# --------------------------------------------------------------------------------------
# Gemma-2/3: the low agreement with exact patching is the models' own non-linearity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_low_agreement_is_the_models_non_linearity_and_is_warned_about(
    name: str, family: Loaded
) -> None:
    from circuitgraph.run import NONLINEAR, far_from_exact

    from .conformance import rel_err

    model, pairs, ref = family.model, family.pairs, family.ref
    nodes = cg.enumerate_nodes(family.info, ("head", "mlp"))
    atp = cg.attribute_nodes(model, pairs, method="atp", nodes=nodes).signed
    exact = cg.attribute_nodes(model, pairs, method="exact", nodes=nodes).signed
    # finite differences of the reference's own patching: AtP is the model's true slope ...
    slope = torch.stack([ref.node_slope(n).mean() for n in nodes])
    assert rel_err(atp, slope) < 1e-3
    # ... and the full patch is far from it (by more than half the largest effect, or with
    # effects of the opposite sign)
    gap, flips = far_from_exact(atp, exact)
    assert gap > NONLINEAR or flips >= 1
    verdicts = {v.check: v for v in cg.check(model, pairs)}
    assert verdicts["non-linearity along the patch"].status == "warn"
    assert all(v.status in ("pass", "warn") for v in verdicts.values()), verdicts


# --------------------------------------------------------------------------------------
# The whole pipeline from the command line, on a user's model directory
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt_neox", "gptj", "gemma2", "qwen3", "olmo2"])
def test_discover_runs_end_to_end_from_a_model_directory(name: str, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from circuitgraph.cli.app import app

    from .families import task_words

    path = save_family(name, tmp_path / "model", words=task_words())
    out = tmp_path / "out"
    small = ["--n-pairs", "8", "--keep-nodes", "8", "--verify-k", "4", "--diagnose-subsets",
             "8", "--edge-top-n", "8", "--edge-fractions", "none"]  # fmt: skip
    result = CliRunner().invoke(
        app, ["discover", "--model", path, "--out", str(out), "--json", *small]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (out / "circuit.json").is_file() and summary["n_nodes"] >= 2


# --------------------------------------------------------------------------------------
# Circuits: faithfulness runs where heads' writes pass a post-norm or blocks are parallel
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma2", "olmo2", "gpt_neox", "gptj"])
def test_circuit_runs_are_exact_at_both_ends_and_for_left_out_sources(
    name: str, family: Loaded
) -> None:
    model, pairs, info = family.model, family.pairs, family.info
    edges = EdgeSet.full(info).edges()
    none = cg.evaluate_circuit(model, pairs, [])
    assert none.metric_circuit == pytest.approx(none.metric_corrupt, abs=1e-5)
    every = cg.evaluate_circuit(model, pairs, edges)
    assert every.metric_circuit == pytest.approx(every.metric_clean, abs=1e-5)
    # Every edge but those out of some sources: the run is those sources' joint node patch
    # (two heads of one post-norm layer are seen corrupt together: their single-head
    # writes do not add up)
    for out in ([cg.Node("head", 0, 1), cg.Node("head", 0, 2)], [cg.Node("mlp", 0)]):
        kept = [e for e in edges if e.src not in out]
        run = cg.evaluate_circuit(model, pairs, kept)
        want = float(family.ref.nodes(out).mean())
        assert run.metric_circuit - run.metric_clean == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("name", ["opt", "falcon"])
def test_mlp_width_is_read_from_the_weights(name: str, family: Loaded) -> None:
    # TransformerLens reports 4·d_model for OPT and Falcon whatever their ffn size
    from .families import D_MLP

    assert family.info.d_mlp == D_MLP != 4 * family.info.d_model
    last = cg.Node("neuron", 1, D_MLP - 1)
    got = cg.attribute_nodes(family.model, family.pairs, method="exact", nodes=[last]).signed
    assert float(got[0]) == pytest.approx(float(family.ref.node(last).mean()), abs=1e-6)
