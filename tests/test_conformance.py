"""circuitgraph against the independent reference, on the families it supports today.

Two independent implementations of exact patching — circuitgraph through the
TransformerBridge, the reference through plain HF hooks — must agree to float32 rounding;
AtP and EAP must equal the reference's derivative at a vanishing perturbation (autograd
through the HF model). This is the seed of the conformance matrix (issue 12): the families
listed here are those where today's code already agrees; ``benchmarks/arch_survey.py``
records the others and why they fail.
"""

from __future__ import annotations

import pytest
import torch

import circuitgraph as cg
from circuitgraph.attribution import EdgeSet

from .families import build, save_family
from .reference import Reference, RefNode, RefPairs
from .test_reference import ref_pairs

TOL = 1e-4  # relative to the largest effect: float32 bridge vs float32 HF model
FAMILIES_OK = ["gpt2", "llama", "bloom", "gpt_bigcode"]


def project_pairs(p: RefPairs) -> cg.PromptPairs:
    return cg.PromptPairs.from_tokens(
        p.clean.tolist(), p.corrupt.tolist(), p.answer.tolist(), p.wrong.tolist()
    )


@pytest.fixture(scope="module", params=FAMILIES_OK)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(bridge, info, reference, project pairs) of one family, built once per module."""
    torch.set_num_threads(1)
    name = request.param
    path = save_family(name, tmp_path_factory.mktemp(name))
    model, info = cg.load_model(path, device="cpu")
    pairs = ref_pairs()
    return model, info, Reference(build(name), pairs), project_pairs(pairs)


def agree(got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> bool:
    return float((got.double() - want).abs().max()) <= tol * float(want.abs().max())


def _nodes(info: cg.ModelInfo) -> list[cg.Node]:
    nodes = cg.enumerate_nodes(info, ("head", "q", "k", "v", "mlp"))
    return nodes + [cg.Node("neuron", layer, i) for layer in range(info.n_layers) for i in (0, 7)]


def test_exact_node_patching_agrees(loaded) -> None:
    model, info, ref, pairs = loaded
    nodes = _nodes(info)
    got = cg.attribute_nodes(model, pairs, "logit_diff", method="exact", nodes=nodes).signed
    want = torch.stack([ref.node(n).mean() for n in nodes])
    assert agree(got, want)


def test_atp_is_the_reference_derivative(loaded) -> None:
    model, info, ref, pairs = loaded
    nodes = _nodes(info)
    got = cg.attribute_nodes(model, pairs, "logit_diff", method="atp", nodes=nodes).signed
    want = torch.stack([ref.grad(lambda s, n=n: ref.node(n, s)).mean() for n in nodes])
    assert agree(got, want)


def test_exact_edge_patching_and_eap_agree(loaded) -> None:
    model, info, ref, pairs = loaded
    cands = EdgeSet.full(info)
    edges = cands.edges()
    exact = cg.attribute_edges(model, pairs, "logit_diff", "exact", cands)
    eap = cg.attribute_edges(model, pairs, "logit_diff", "eap", cands)
    want = torch.stack([ref.edge(e.src, e.dst).mean() for e in edges])
    slope = torch.stack([ref.grad(lambda s, e=e: ref.edge(e.src, e.dst, s)).mean() for e in edges])
    assert agree(torch.tensor([exact[e][0] for e in edges]), want)
    assert agree(torch.tensor([eap[e][0] for e in edges]), slope)


def test_reference_derivative_is_the_finite_difference() -> None:
    """The autograd slope is the limit of the reference's own patching (float64 model)."""
    torch.set_num_threads(1)
    ref = Reference(build("gpt2").double(), ref_pairs())
    for node in (RefNode("head", 0, 1), RefNode("k", 1, 0), RefNode("neuron", 0, 3)):
        auto = ref.grad(lambda s, n=node: ref.node(n, s))
        assert torch.allclose(auto, ref.node_slope(node), rtol=1e-6, atol=1e-9)
    src, dst = RefNode("head", 0, 2), RefNode("q", 1, 3)
    auto = ref.grad(lambda s: ref.edge(src, dst, s))
    assert torch.allclose(auto, ref.edge_slope(src, dst), rtol=1e-6, atol=1e-9)
