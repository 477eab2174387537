"""Why the screen misses zoo:gpt2-4l's induction heads: exact effects (and AtP) with pieces
downstream frozen at their clean values.

Freezing a piece makes it linear in what it reads: a norm's scale (the divisor) fixed, an
attention pattern fixed, an MLP replaced by its tangent at the clean pre-activation. With
everything frozen the model is linear in a head's output and AtP equals exact patching,
which the last columns check; the columns between say which nonlinearity carries the part
AtP misses.

    python -m benchmarks.induction_mechanism [--pairs 48] [--seed 1]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from circuitgraph import load_model
from circuitgraph.arch import Arch, hooks
from circuitgraph.nodes import Node
from circuitgraph.run import attached, capture
from circuitgraph.tasks import make_pairs
from circuitgraph.tasks.metrics import answer_logits, get_metric

NODES = ["a0.h0", "a0.h0<k>", "a2.h0<v>", "a2.h0", "a2.h0<k>", "a0.h2", "a1.h2", "a1.h3"]
FREEZES: list[tuple[str, ...]] = [
    (), ("final",), ("norms",), ("final", "norms"), ("pattern",), ("mlp",),
    ("final", "norms", "mlp"), ("final", "norms", "pattern", "mlp"),
]  # fmt: skip


class Frozen:
    """The clean run's values, and hooks that freeze pieces of the model at them."""

    def __init__(self, model: Any, pairs: Any, n_layers: int) -> None:
        self.model, self.pairs, self.layers = model, pairs, range(n_layers)
        names = [hooks.final_scale, *self._names("norms"), *self._names("pattern")]
        names += [hooks.mlp_pre(lay) for lay in self.layers] + [
            hooks.mlp_post(lay) for lay in self.layers
        ]
        self.clean = capture(model, pairs.clean, names)

    def _names(self, piece: str) -> list[str]:
        if piece == "final":
            return [hooks.final_scale]
        if piece == "norms":
            return [hooks.norm_scale(lay, w) for lay in self.layers for w in (1, 2)]
        return [hooks.pattern(lay) for lay in self.layers]

    def hooks(self, pieces: Sequence[str]) -> list[tuple[str, Callable[..., Any]]]:
        out: list[tuple[str, Callable[..., Any]]] = []
        for piece in pieces:
            if piece == "mlp":
                out += [h for lay in self.layers for h in self._tangent(lay)]
            else:
                out += [(n, self._const(n)) for n in self._names(piece)]
        return out

    def _const(self, name: str) -> Callable[..., Tensor]:
        return lambda act, hook: self.clean[name]

    def _tangent(self, layer: int) -> list[tuple[str, Callable[..., Any]]]:
        pre_c, post_c = self.clean[hooks.mlp_pre(layer)], self.clean[hooks.mlp_post(layer)]
        x = pre_c.clone().requires_grad_(True)
        with torch.enable_grad():
            (slope,) = torch.autograd.grad(
                torch.nn.functional.gelu(x, approximate="tanh").sum(), [x]
            )
        seen: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any) -> None:
            seen["pre"] = act

        def tangent(act: Tensor, hook: Any) -> Tensor:
            return post_c + slope * (seen["pre"] - pre_c)

        return [(hooks.mlp_pre(layer), keep), (hooks.mlp_post(layer), tangent)]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, info = load_model("zoo:gpt2-4l", device="cpu")
    pairs = make_pairs("induction", model.tokenizer, args.pairs, seed=args.seed)
    metric = get_metric("logit_diff")
    frozen = Frozen(model, pairs, info.n_layers)
    nodes = [Node.parse(x) for x in NODES]
    hook_site = Arch.of(model).node_site
    corrupt = capture(model, pairs.corrupt, sorted({hook_site(n).name for n in nodes}))

    def value(fwd: list[tuple[str, Callable[..., Any]]], grad_at: str | None = None) -> Any:
        got: dict[str, Tensor] = {}
        bwd = [] if grad_at is None else [(grad_at, lambda g, hook: got.__setitem__("g", g))]

        def leaf(act: Tensor, hook: Any) -> Tensor:
            return act.detach().requires_grad_(True)

        with torch.enable_grad(), attached(model, fwd=[(hooks.embed, leaf), *fwd], bwd=bwd):
            v = metric(answer_logits(model(pairs.clean), pairs), pairs).double()
            if grad_at is not None:
                v.sum().backward()
        return v.detach(), got.get("g")

    base, _ = value([])

    def patch(node: Node) -> tuple[str, Callable[..., Tensor]]:
        s = hook_site(node)

        def put(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            act[:, :, s.index] = corrupt[s.name][:, :, s.index]
            return act

        return s.name, put

    def exact(node: Node, pieces: Sequence[str]) -> float:
        v, _ = value([patch(node), *frozen.hooks(pieces)])
        return float((v - base).mean())

    def atp(node: Node, pieces: Sequence[str]) -> float:
        s = hook_site(node)
        acts: dict[str, Tensor] = {}
        _, g = value([(s.name, lambda a, hook: acts.__setitem__("x", a.detach())),
                      *frozen.hooks(pieces)], grad_at=s.name)  # fmt: skip
        if g is None:
            return 0.0
        d = corrupt[s.name][:, :, s.index] - acts["x"][:, :, s.index]
        return float((d * g[:, :, s.index]).sum()) / len(pairs)

    labels = ["+".join(f) or "none" for f in FREEZES]
    head = f"{'node':<10}" + "".join(f"{x:>{len(x) + 2}}" for x in labels)
    for what, fn in (("exact", exact), ("AtP", atp)):
        print(f"{what} effect with the pieces named frozen\n{head}")
        for n in nodes:
            cells = [f"{fn(n, f):>{len(x) + 2}.2f}" for f, x in zip(FREEZES, labels, strict=True)]
            print(f"{n.id:<10}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
