"""circuitgraph against the independent reference on one family: the comparisons behind
every ✓ of the conformance matrix (docs/architectures.md).

Each check runs one capability of circuitgraph through its public API on a tiny random
model of the family (loaded from disk like a user's model) and compares it with
``tests/reference.py`` (plain PyTorch hooks on the Hugging Face modules) on the same
weights and prompt pairs. It returns the relative error (largest difference over the
largest true effect); ``tests/test_families.py`` asserts the tolerance of each, and
``benchmarks/conformance.py`` writes the matrix from the same functions.

What "the same" means per capability:

* exact node / edge patching: the reference's exact patch (to 1e-5 of the largest effect);
* AtP, EAP: the reference's derivative at a vanishing perturbation (autograd through the
  HF model, ``Reference.grad``), which is exactly what they estimate (1e-4);
* EAP-IG: the reference's derivative averaged over the same interpolated inputs (1e-4);
* QK fix: exact patching of the q or k node with the metric linearised in that layer's
  head outputs z (L_lin = ∂L/∂z · z; the layer's attention and everything before it exact,
  at the full corrupt perturbation): the QK fix claims exactly that (1e-4);
* AtP* (nodes and edges), at the full perturbation: its signed value against the QK-fix
  truth above for q/k nodes (and edges into q/k) and the derivative for the others, its
  GradDrop score against the same quantities with each layer's writes detached in the
  reference (autograd through the HF model with those outputs detached) (1e-4);
* discover: the whole pipeline runs to a circuit (its parts are the columns before it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import circuitgraph as cg
from circuitgraph.arch import Arch
from circuitgraph.attribution import EdgeSet

from .families import D_VOCAB, build, save_family
from .reference import Reference, RefPairs

__all__ = [
    "CAPABILITIES", "TOL", "Loaded", "check", "edge_sample", "load", "node_list",
    "project_pairs",
]  # fmt: skip

#: each capability's tolerance on the relative error
TOL = {
    "nodes exact": 1e-5, "nodes AtP": 1e-4, "QK fix": 1e-4, "nodes AtP*": 1e-4,
    "edges exact": 1e-5, "EAP": 1e-4, "EAP-IG": 1e-4, "edges AtP*": 1e-4, "discover": 0.0,
}  # fmt: skip
CAPABILITIES = tuple(TOL)


def _pairs(n: int = 4, t: int = 8, seed: int = 0) -> RefPairs:
    """Same-length pairs whose clean and corrupt differ at two positions by other words;
    answer and wrong token differ."""
    g = torch.Generator().manual_seed(seed)
    words = (4, D_VOCAB)
    clean = torch.randint(*words, (n, t), generator=g)
    clean[:, 0] = 2
    corrupt = clean.clone()
    for i in range(n):
        for j in torch.randperm(t - 1, generator=g)[:2].add(1).tolist():
            shift = int(torch.randint(1, words[1] - words[0], (1,), generator=g))
            corrupt[i, j] = words[0] + (clean[i, j] - words[0] + shift) % (words[1] - words[0])
    answer = torch.randint(4, D_VOCAB, (n,), generator=g)
    wrong = 4 + (answer - 4 + torch.randint(1, D_VOCAB - 4, (n,), generator=g)) % (D_VOCAB - 4)
    return RefPairs(clean, corrupt, answer, wrong)


def project_pairs(p: RefPairs) -> cg.PromptPairs:
    return cg.PromptPairs.from_tokens(
        p.clean.tolist(), p.corrupt.tolist(), p.answer.tolist(), p.wrong.tolist()
    )


@dataclass
class Loaded:
    """One family: the bridge circuitgraph loaded from disk, the reference on the same
    weights, the same prompt pairs for both."""

    name: str
    model: Any
    info: cg.ModelInfo
    arch: Arch
    ref: Reference
    pairs: cg.PromptPairs


def load(name: str, folder: str | Path) -> Loaded:
    torch.set_num_threads(1)
    path = save_family(name, folder)
    model, info = cg.load_model(path, device="cpu")
    pairs = _pairs()
    return Loaded(name, model, info, Arch.of(model), Reference(build(name), pairs),
                  project_pairs(pairs))  # fmt: skip


def node_list(info: cg.ModelInfo, positions: bool = False) -> list[cg.Node]:
    """Every head, q, k, v and MLP node, two neurons per layer (none for experts), and
    with ``positions`` the q and k nodes at two positions."""
    nodes = cg.enumerate_nodes(info, ("head", "q", "k", "v", "mlp"))
    if not info.moe:
        nodes += [cg.Node("neuron", layer, i) for layer in range(info.n_layers) for i in (0, 7)]
    if positions:
        nodes += [n.at(t) for n in nodes if n.kind in ("q", "k") for t in (3, 7)]
    return nodes


def edge_sample(arch: Arch, every: bool = False) -> list[cg.Edge]:
    """Edges of every (source kind, target kind) pair the model has, parallel blocks
    included (``every``: all edges): the first and last of each kind pair, and each
    head → MLP edge of the layer after the head's."""
    edges = EdgeSet.full(arch.info).edges()
    if every:
        return edges
    by_kind: dict[tuple[str, str], list[cg.Edge]] = {}
    for e in edges:
        by_kind.setdefault((e.src.kind, e.dst.kind), []).append(e)
    chosen = {e for group in by_kind.values() for e in (group[0], group[-1])}
    chosen |= {e for e in edges if e.src.kind == "head" and e.dst.kind == "mlp"
               and e.dst.layer == e.src.layer + 1 and e.src.index == 0}  # fmt: skip
    return sorted(chosen, key=lambda e: (e.dst.sort_key, e.src.sort_key))


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference over the largest true value (which must not be 0)."""
    scale = float(want.abs().max())
    assert scale > 0, "every true value is 0: the comparison would prove nothing"
    return float((got.double() - want.double()).abs().max()) / scale


def _mean(x: torch.Tensor) -> float:
    return float(x.mean())


# --------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------


def nodes_exact(fam: Loaded) -> float:
    nodes = node_list(fam.info, positions=True)
    got = cg.attribute_nodes(fam.model, fam.pairs, method="exact", nodes=nodes).signed
    want = torch.tensor([_mean(fam.ref.node(n)) for n in nodes])
    return rel_err(got, want)


def nodes_atp(fam: Loaded) -> float:
    nodes = node_list(fam.info, positions=True)
    got = cg.attribute_nodes(fam.model, fam.pairs, method="atp", nodes=nodes).signed
    ref = fam.ref
    want = torch.tensor([_mean(ref.grad(lambda s, n=n: ref.node(n, s))) for n in nodes])
    return rel_err(got, want)


def qk_linearised(ref: Reference, node: Any) -> float:
    """Exact patching of a q/k node with the metric linear in its layer's head outputs:
    Σ ∂L/∂z · (z_patched − z_clean), the quantity the QK fix computes (z = A·v: only the
    pattern moves)."""
    dz = ref.nodes([node], z_of=node.layer) - ref.clean[("z", node.layer)]
    return float((dz.double() * ref.z_grad(node.layer).double()).sum((1, 2)).mean())


def qk_fix(fam: Loaded) -> float:
    nodes = [n for n in node_list(fam.info, positions=True) if n.kind in ("q", "k")]
    got = cg.attribute_nodes(fam.model, fam.pairs, method="atp+qkfix", nodes=nodes).signed
    want = torch.tensor([qk_linearised(fam.ref, n) for n in nodes])
    return rel_err(got, want)


def _per_layer(ref: Reference, n_layers: int, effect: Callable[[], torch.Tensor]) -> torch.Tensor:
    """[layers, pairs]: ``effect()`` with each layer's attention and MLP writes detached in
    turn (GradDrop's Î_l, computed by the reference's own autograd)."""
    out = []
    for layer in range(n_layers):
        with ref.variant(drop=layer):
            out.append(effect())
    return torch.stack(out)


def _qk_per_layer(ref: Reference, node: Any, n_layers: int, dz: torch.Tensor) -> torch.Tensor:
    """[layers + 1, pairs]: Σ ∂L/∂z · Δz, plainly and with each layer's writes detached."""

    def lin() -> torch.Tensor:
        return (dz.double() * ref.z_grad(node.layer).double()).sum((1, 2))

    return torch.cat([lin().unsqueeze(0), _per_layer(ref, n_layers, lin)])


def _graddrop(per_layer: torch.Tensor, layers: Sequence[int], divisor: int) -> float:
    """E[(1/divisor) Σ_{l ∈ layers} |Î_l|]."""
    return float(per_layer[list(layers)].abs().sum(0).mean()) / max(divisor, 1)


def nodes_atp_star(fam: Loaded) -> float:
    """AtP* at the full corrupt perturbation: for q/k nodes the QK-fixed effect (exact
    patching linearised in z), else the derivative; GradDrop: the same with each layer's
    writes detached, summed in absolute value over the layers, over L − 1."""
    nodes = node_list(fam.info)
    got = cg.attribute_nodes(fam.model, fam.pairs, method="atp*", nodes=nodes)
    ref, n_layers = fam.ref, fam.info.n_layers
    signed, score = [], []
    for n in nodes:
        if n.kind in ("q", "k"):
            dz = ref.nodes([n], z_of=n.layer) - ref.clean[("z", n.layer)]
            rows = _qk_per_layer(ref, n, n_layers, dz)
            plain, per_layer = rows[0], rows[1:]
        else:
            plain = ref.grad(lambda s, n=n: ref.node(n, s))
            per_layer = _per_layer(ref, n_layers, lambda n=n: ref.grad(lambda s: ref.node(n, s)))
        # every layer, over L − 1: the node's own contributes 0 (its paths leave through it)
        signed.append(float(plain.mean()))
        score.append(_graddrop(per_layer, range(n_layers), n_layers - 1))
    return max(rel_err(got.signed, torch.tensor(signed)), rel_err(got.score, torch.tensor(score)))


# --------------------------------------------------------------------------------------
# Edges
# --------------------------------------------------------------------------------------


def _scores(fam: Loaded, pairs: cg.PromptPairs, method: str, edges: Sequence[cg.Edge],
            **options: Any) -> cg.EdgeScores:  # fmt: skip
    cands = EdgeSet.full(fam.info)
    return cg.attribute_edges(fam.model, pairs, method=method, candidates=cands, **options)


def edges_exact(fam: Loaded, edges: Sequence[cg.Edge]) -> float:
    got = cg.patch_edges(fam.model, fam.pairs, list(edges))
    want = torch.tensor([_mean(fam.ref.edge(e.src, e.dst)) for e in edges])
    return rel_err(torch.tensor([got[e][0] for e in edges]), want)


def _edge_grad(ref: Reference, e: cg.Edge) -> torch.Tensor:
    return ref.grad(lambda s: ref.edge(e.src, e.dst, s))


def eap(fam: Loaded, edges: Sequence[cg.Edge]) -> float:
    got = _scores(fam, fam.pairs, "eap", edges)
    want = torch.tensor([_mean(_edge_grad(fam.ref, e)) for e in edges])
    return rel_err(torch.tensor([got[e][0] for e in edges]), want)


def eap_ig(fam: Loaded, edges: Sequence[cg.Edge], steps: int = 3) -> float:
    got = _scores(fam, fam.pairs, "eap-ig", edges, steps=steps)
    ref = fam.ref
    want = torch.zeros(len(edges), dtype=torch.float64)
    for k in range(1, steps + 1):
        with ref.variant(alpha=k / steps):
            want += torch.tensor([_mean(_edge_grad(ref, e)) for e in edges]) / steps
    return rel_err(torch.tensor([got[e][0] for e in edges]), want)


def edges_atp_star(fam: Loaded, edges: Sequence[cg.Edge]) -> float:
    """Edge AtP* at the full corrupt perturbation: into a q or k target the QK-fixed effect
    (exact edge patching linearised in the target layer's z), else EAP's derivative;
    GradDrop over every layer but the target's own (all layers for the logits)."""
    got = _scores(fam, fam.pairs, "atp*", edges)
    ref, n_layers = fam.ref, fam.info.n_layers
    signed, score = [], []
    for e in edges:
        if e.dst.kind in ("q", "k"):
            layer = e.dst.layer
            dz = ref.edges([e], z_of=layer) - ref.clean[("z", layer)]
            rows = _qk_per_layer(ref, e.dst, n_layers, dz)
            plain, per_layer = rows[0], rows[1:]
        else:
            plain = _edge_grad(ref, e)
            per_layer = _per_layer(ref, n_layers, lambda e=e: _edge_grad(ref, e))
        layers = [lay for lay in range(n_layers) if e.dst.kind == "logits" or lay != e.dst.layer]
        signed.append(float(plain.mean()))
        score.append(_graddrop(per_layer, layers, len(layers)))
    return max(
        rel_err(torch.tensor([got[e][0] for e in edges]), torch.tensor(signed)),
        rel_err(torch.tensor([got[e][1] for e in edges]), torch.tensor(score)),
    )


def discover(fam: Loaded) -> float:
    found = cg.discover(
        fam.model, fam.pairs, verify_k=4, diagnose_subsets=8, keep_nodes=8, edge_top_n=8,
        curve_sizes=(4, 8),
    )  # fmt: skip
    assert torch.isfinite(torch.tensor(found.faithfulness.metric_clean))
    return 0.0


CHECKS: dict[str, Callable[..., float]] = {
    "nodes exact": nodes_exact, "nodes AtP": nodes_atp, "QK fix": qk_fix,
    "nodes AtP*": nodes_atp_star, "edges exact": edges_exact, "EAP": eap, "EAP-IG": eap_ig,
    "edges AtP*": edges_atp_star, "discover": discover,
}  # fmt: skip
EDGE_CHECKS = {"edges exact", "EAP", "EAP-IG", "edges AtP*"}


def check(fam: Loaded, capability: str, every: bool = False) -> float:
    """The relative error of one capability against the reference (raises what
    circuitgraph raises: a refusal is a :class:`circuitgraph.CircuitGraphError`)."""
    fn = CHECKS[capability]
    if capability in EDGE_CHECKS:
        return fn(fam, edge_sample(fam.arch, every))
    return fn(fam)
