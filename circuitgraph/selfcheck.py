"""Self-checks on a user's own model: can its numbers be trusted? (``circuitgraph check``)

A new architecture, a new version of transformers or TransformerLens, a quantised or
converted checkpoint: any of them can make a hook sit where it should not, or an
estimator's assumption fail silently. :func:`check` runs, in about a minute on a CPU, one
comparison per claim the library makes, on a few random prompt pairs, and returns one
:class:`Verdict` each:

* **exact node patching** of a few heads, MLPs and neurons against an independent forward:
  plain PyTorch hooks on the Hugging Face modules the bridge wraps (no hook point, none of
  the library's patching code);
* **AtP** of nodes of every kind against a finite difference of exact patching
  (patch clean + s·(corrupt − clean) at s = ±h, Richardson-extrapolated): AtP must be
  that derivative;
* **QK fix** of a query and a key node against exact patching with the metric linearised
  in that layer's head outputs (the QK fix recomputes the pattern exactly and linearises
  only after z = A·v);
* **EAP** of edges of every kind against a finite difference of exact edge patching;
* **non-linearity**: how far a full patch is from AtP where AtP is the true derivative —
  a warning, not a failure, that attribution scores on this model rank by a slope the
  model leaves quickly (Gemma-2/3-like models at random or small scale), so the top nodes
  should be verified by exact patching (``discover`` does; ``verify`` on any circuit).

A check the model refuses (say the QK fix on an attention form it cannot recompute)
reports the library's one-sentence refusal.

Example:
    >>> import circuitgraph as cg
    >>> model, info = cg.load_model("zoo:attn-only-2l")  # doctest: +SKIP
    >>> for v in cg.check(model):  # doctest: +SKIP
    ...     print(v.line())
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from circuitgraph.arch import Arch, hooks
from circuitgraph.attribution import EdgeSet, attribute_edges, attribute_nodes
from circuitgraph.errors import CircuitGraphError
from circuitgraph.nodes import Edge, Node
from circuitgraph.patching import patch_edges, patch_nodes
from circuitgraph.run import (
    NONLINEAR,
    Plan,
    attached,
    clean_run,
    far_from_exact,
    keep,
    model_device,
)
from circuitgraph.tasks.metrics import answer_logits, get_metric
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["Verdict", "check", "random_pairs", "summary"]

Status = Literal["pass", "warn", "fail", "refused", "skipped"]
_STEP = 1e-2  # finite differences: s = ±h, ±h/2 (Richardson), h relative to the full patch


@dataclass(frozen=True)
class Verdict:
    """The outcome of one self-check.

    ``error`` is the largest difference over the largest reference value (None where
    nothing was compared); ``status`` is pass / warn / fail / refused / skipped.

    Example:
        >>> Verdict("AtP vs finite difference", "pass", "heads within 1e-4", 1e-4).line()
        'pass     AtP vs finite difference: heads within 1e-4'
    """

    check: str
    status: Status
    detail: str
    error: float | None = None

    def line(self) -> str:
        return f"{self.status:<8} {self.check}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "detail": self.detail,
                "error": self.error}  # fmt: skip


def random_pairs(model: Any, n: int = 4, seq_len: int = 8, seed: int = 0) -> PromptPairs:
    """Random prompt pairs for a model: corrupt differs from clean at two positions; the
    answer and the wrong token are random too (the checks need effects, not meaning).

    Example:
        >>> p = random_pairs(model, n=2, seq_len=6)  # doctest: +SKIP
    """
    info = Arch.of(model).info
    g = torch.Generator().manual_seed(seed)
    vocab = max(2, min(info.d_vocab, 50_000))
    t = max(3, min(seq_len, info.n_ctx))
    clean = torch.randint(0, vocab, (n, t), generator=g)
    corrupt = clean.clone()
    for i in range(n):
        for j in (torch.randperm(t - 1, generator=g)[:2] + 1).tolist():
            corrupt[i, j] = (
                clean[i, j] + 1 + torch.randint(0, vocab - 1, (1,), generator=g)
            ) % vocab
    answer = torch.randint(0, vocab, (n,), generator=g).tolist()
    wrong = [(a + 1 + int(torch.randint(0, vocab - 1, (1,), generator=g))) % vocab for a in answer]
    return PromptPairs.from_tokens(clean.tolist(), corrupt.tolist(), answer, wrong).to(
        model_device(model)
    )


def check(
    model: Any, pairs: PromptPairs | None = None, *, seed: int = 0, tol: float | None = None
) -> list[Verdict]:
    """Run every self-check on ``model`` (random pairs unless ``pairs`` are given).

    ``tol`` is the relative error a finite-difference comparison may show (default: 1e-2
    in float32 and float64, where finite differences of a float32 forward are good to a few
    1e-3, and 5e-2 in half precision; a bug is an error of order one); the QK fix must agree
    ten times closer, exact patching with the independent forward a hundred times.

    Example:
        >>> [v.status for v in check(model)]  # doctest: +SKIP
        ['pass', 'pass', 'pass', 'pass', 'pass']
    """
    pairs = pairs if pairs is not None else random_pairs(model, seed=seed)
    arch = Arch.of(model)
    dtype = next(iter(model.parameters())).dtype
    tol = tol if tol is not None else (1e-2 if torch.finfo(dtype).bits >= 32 else 5e-2)
    probe = _Probe(model, arch, pairs, tol)
    return [
        _guarded("exact nodes vs independent forward", probe.exact_nodes),
        _guarded("AtP vs finite difference", probe.atp),
        _guarded("QK fix vs exact (q and k node)", probe.qk_fix),
        _guarded("EAP vs finite difference of exact edges", probe.eap),
        _guarded("non-linearity along the patch", probe.nonlinearity),
    ]


def _guarded(name: str, run: Callable[[], tuple[Status, str, float | None]]) -> Verdict:
    try:
        status, detail, error = run()
    except CircuitGraphError as err:  # a refusal: the library's own sentence
        return Verdict(name, "refused", str(err))
    except Exception as err:  # a crash is a failed check, said in one line
        text = str(err).strip().splitlines()
        return Verdict(name, "fail", f"{type(err).__name__}: {text[0] if text else ''}")
    return Verdict(name, status, detail, error)


def _rel(got: Tensor, want: Tensor) -> float:
    scale = float(want.abs().max())
    return float((got.double() - want.double()).abs().max()) / scale if scale > 0 else 0.0


def _verdict(err: float, tol: float, what: str) -> tuple[Status, str, float]:
    status: Status = "pass" if err <= tol else "fail"
    return status, f"{what} within {err:.1e} of the largest effect (tolerance {tol:.0e})", err


class _Probe:
    """The nodes and edges the checks use: the first and last layer's, a few of each kind."""

    def __init__(self, model: Any, arch: Arch, pairs: PromptPairs, tol: float) -> None:
        self.model, self.arch, self.pairs, self.tol = model, arch, pairs, tol
        info = arch.info
        last = info.n_layers - 1
        g = info.grouped_query
        self.nodes: list[Node] = [Node("head", 0, 0), Node("head", last, info.n_heads - 1)]
        self.nodes += [Node("q", last, 0), Node("k", last, 0, None, g), Node("v", 0, 0, None, g)]
        if not info.attn_only:
            self.nodes += [Node("mlp", 0), Node("mlp", last)]
            if not info.moe and info.d_mlp:
                self.nodes += [Node("neuron", last, 0), Node("neuron", last, info.d_mlp - 1)]
        self._slope: Tensor | None = None
        self._smooth = torch.ones(len(self.nodes), dtype=torch.bool)

    # ---- exact nodes vs an independent forward -------------------------------------------

    def exact_nodes(self) -> tuple[Status, str, float | None]:
        nodes = [n for n in self.nodes if n.kind in ("head", "mlp", "neuron")]
        got = patch_nodes(self.model, self.pairs, nodes).signed
        want = torch.tensor([_independent_effect(self.model, self.arch, self.pairs, n)
                             for n in nodes])  # fmt: skip
        if float(want.abs().max()) == 0.0:
            return "skipped", "every effect is 0 on these prompts", None
        return _verdict(_rel(got, want), self.tol / 100, f"{len(nodes)} head/MLP/neuron nodes")

    # ---- AtP vs a finite difference -------------------------------------------------------

    def slopes(self) -> tuple[Tensor, Tensor]:
        if self._slope is None:
            self._slope, self._smooth = _richardson(
                lambda s: patch_nodes(self.model, self.pairs, self.nodes, scale=s).signed,
                self.tol,
            )
        return self._slope, self._smooth

    def atp(self) -> tuple[Status, str, float | None]:
        got = attribute_nodes(self.model, self.pairs, method="atp", nodes=self.nodes).signed
        want, smooth = self.slopes()
        kinds = sorted({n.kind for n in self.nodes if smooth[self.nodes.index(n)]})
        return _smooth_verdict(got, want, smooth, self.tol, f"{'/'.join(kinds)} nodes")

    # ---- QK fix vs exact, linearised after the pattern -----------------------------------

    def qk_fix(self) -> tuple[Status, str, float | None]:
        nodes = [n for n in self.nodes if n.kind in ("q", "k")]
        got = attribute_nodes(self.model, self.pairs, method="atp+qkfix", nodes=nodes).signed
        want = torch.tensor([_linearised_qk(self.model, self.arch, self.pairs, n) for n in nodes])
        if float(want.abs().max()) == 0.0:
            return "skipped", "the q and k nodes have no effect on these prompts", None
        return _verdict(_rel(got, want), self.tol / 10, "a q and a k node")

    # ---- EAP vs a finite difference of exact edge patching --------------------------------

    def edges(self) -> list[Edge]:
        info, arch = self.arch.info, self.arch
        last = info.n_layers - 1
        g = info.grouped_query
        sources = [Node("input"), Node("head", 0, 0)] + ([] if info.attn_only else [Node("mlp", 0)])
        targets = [Node("q", last, 0), Node("k", last, 0, None, g), Node("v", last, 0, None, g),
                   Node("logits")] + ([] if info.attn_only else [Node("mlp", last)])  # fmt: skip
        return [Edge(s, t) for s in sources for t in targets if arch.can_feed(s, t)]

    def eap(self) -> tuple[Status, str, float | None]:
        edges = self.edges()
        srcs = sorted({e.src for e in edges}, key=lambda n: n.sort_key)
        tgts = sorted({e.dst for e in edges}, key=lambda n: n.sort_key)
        cands = EdgeSet.between(srcs, tgts, self.arch.parallel)
        scores = attribute_edges(self.model, self.pairs, method="eap", candidates=cands)
        got = torch.tensor([scores[e][0] for e in edges])

        def effect(s: float) -> Tensor:
            exact = patch_edges(self.model, self.pairs, edges, scale=s)
            return torch.tensor([exact[e][0] for e in edges])

        want, smooth = _richardson(effect, self.tol)
        return _smooth_verdict(got, want, smooth, self.tol, f"{int(smooth.sum())} edges")

    # ---- how far a full patch is from the slope -------------------------------------------

    def nonlinearity(self) -> tuple[Status, str, float | None]:
        slope, smooth = self.slopes()
        if not bool(smooth.any()):
            return "skipped", "no node's effect is smooth along the patch", None
        full = patch_nodes(self.model, self.pairs, self.nodes).signed[smooth]
        slope = slope[smooth]
        if float(full.abs().max()) == 0.0:
            return "skipped", "every effect is 0 on these prompts", None
        gap, flips = far_from_exact(slope, full)
        if gap > NONLINEAR or flips:
            return "warn", (
                f"full patches differ from AtP (the exact slope) by up to {gap:.2f} of the "
                f"largest effect ({flips} of {len(full)} effects change sign): this model is "
                "strongly non-linear along the patch, so attribution scores (AtP, EAP) rank "
                "poorly here; verify the top nodes and edges by exact patching"
            ), gap  # fmt: skip
        return "pass", f"full patches within {gap:.2f} of AtP (the slope)", gap


def _richardson(
    effect: Callable[[float], Tensor], tol: float, h: float = _STEP
) -> tuple[Tensor, Tensor]:
    """dI/ds at s = 0 from patches at ±h and ±h/2 (error O(h⁴)), and which effects are
    smooth enough there for it to mean anything: the two central differences must agree
    (a discrete choice inside the model, such as expert routing, may switch within ±h and
    make a difference quotient of a jump)."""
    d1 = (effect(h) - effect(-h)) / (2 * h)
    d2 = (effect(h / 2) - effect(-h / 2)) / h
    scale = max(float(d2.abs().max()), 1e-30)
    smooth = (d1 - d2).abs() <= 10 * tol * scale
    return (4 * d2 - d1) / 3, smooth


def _smooth_verdict(
    got: Tensor, want: Tensor, smooth: Tensor, tol: float, what: str
) -> tuple[Status, str, float | None]:
    """Compare where the finite difference is meaningful; say how many were not."""
    if not bool(smooth.any()):
        return "skipped", (
            "no effect is smooth along the patch (a discrete choice such as expert routing "
            "switches within the finite-difference step), so nothing could be compared"
        ), None  # fmt: skip
    scale = float(want[smooth].abs().max())
    err = float((got[smooth].double() - want[smooth].double()).abs().max()) / scale if scale else 0
    status, detail, _ = _verdict(err, tol, what)
    rough = int((~smooth).sum())
    if rough:
        detail += f"; {rough} not compared (not smooth along the patch: e.g. routing switches)"
    return status, detail, err


# --------------------------------------------------------------------------------------
# The independent forward: plain PyTorch hooks on the wrapped Hugging Face modules
# --------------------------------------------------------------------------------------


def _original(component: Any) -> Any:
    return getattr(component, "original_component", None) or component


def _where(model: Any, arch: Arch, node: Node) -> tuple[torch.nn.Module, bool, slice]:
    """(HF module, whether the node is its input, feature slice) of a head, MLP or neuron:
    a head is its slice of the output projection's input, an MLP the write it adds to the
    residual stream (after a post-norm), a neuron an input of the down-projection."""
    block = model.blocks[node.layer]
    if node.kind == "head":
        d = arch.info.d_head
        assert node.index is not None
        return _original(block.attn.o), True, slice(node.index * d, (node.index + 1) * d)
    if node.kind == "mlp":
        if arch.post_norm:
            return _original(block.ln2_post), False, slice(None)
        out = getattr(block.mlp, "out", None)
        return _original(out if out is not None else block.mlp), False, slice(None)
    assert node.index is not None
    return _original(block.mlp.out), True, slice(node.index, node.index + 1)


@contextmanager
def _torch_hook(module: torch.nn.Module, is_input: bool, fn: Callable[[Tensor], Tensor | None]
                ) -> Iterator[None]:  # fmt: skip
    def first(x: Any) -> Tensor:
        return x[0] if isinstance(x, tuple) else x

    def pre(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = next(iter(kwargs))
        new = fn(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    def post(mod: Any, args: Any, out: Any) -> Any:
        new = fn(first(out))
        if new is None:
            return None
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = (
        module.register_forward_pre_hook(pre, with_kwargs=True)
        if is_input
        else module.register_forward_hook(post)
    )
    try:
        yield
    finally:
        handle.remove()


def _metric(model: Any, pairs: PromptPairs, tokens: Tensor) -> Tensor:
    with torch.no_grad(), attached(model):  # no hook point attached: plain forward
        logits = answer_logits(model(tokens), pairs)
    return get_metric("logit_diff")(logits, pairs, None).double()


def _independent_effect(model: Any, arch: Arch, pairs: PromptPairs, node: Node) -> float:
    """E I(n) by an independent hooked forward: record the node's corrupt value, write it
    into the clean run."""
    module, is_input, cols = _where(model, arch, node)
    b, t = pairs.clean.shape
    seen: dict[str, Tensor] = {}

    def record(x: Tensor) -> None:
        seen["x"] = x.detach().reshape(b, t, -1).clone()

    def write(x: Tensor) -> Tensor:
        y = x.reshape(b, t, -1).clone()
        y[..., cols] = seen["x"][..., cols]
        return y.reshape(x.shape)

    with _torch_hook(module, is_input, record):
        _metric(model, pairs, pairs.corrupt)
    with _torch_hook(module, is_input, write):
        patched = _metric(model, pairs, pairs.clean)
    return float((patched - _metric(model, pairs, pairs.clean)).mean())


def _linearised_qk(model: Any, arch: Arch, pairs: PromptPairs, node: Node) -> float:
    """Exact patching of a q/k node with the metric linear in its layer's head outputs:
    E Σ ∂L/∂z · (z_patched − z_clean)."""
    layer, site = node.layer, arch.node_site(node)
    z_name = hooks.z(layer)
    grads = clean_run(
        model, pairs, get_metric("logit_diff"), Plan((), (), (z_name,), ()), "noising",
        lambda run: run.grads(None)[z_name],
    )  # fmt: skip
    corrupt: dict[str, Tensor] = {}
    clean: dict[str, Tensor] = {}
    with torch.no_grad(), attached(model, fwd=[(site.name, keep(corrupt, "x"))]):
        model(pairs.corrupt)

    def patch(act: Tensor, hook: Any) -> Tensor:
        out = act.clone()
        site.view(out)[:, :, site.index] = site.view(corrupt["x"])[:, :, site.index]
        return out

    with torch.no_grad(), attached(model, fwd=[(z_name, keep(clean, "z"))]):
        model(pairs.clean)
    patched: dict[str, Tensor] = {}
    with torch.no_grad(), attached(model, fwd=[(site.name, patch), (z_name, keep(patched, "z"))]):
        model(pairs.clean)
    dz = patched["z"].double() - clean["z"].double()
    return float((dz * grads.double()).flatten(1).sum(1).mean())


def summary(verdicts: Sequence[Verdict]) -> str:
    """One line: how many checks passed, warned, failed or were refused."""
    counts = {s: sum(v.status == s for v in verdicts) for s in ("pass", "warn", "fail", "refused")}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no checks"
