"""GradDrop of AtP*: find nodes whose direct and indirect effects cancel (DESIGN §2).

For each layer l, backpropagate with the gradient through layer l's residual writes (its
attention and MLP outputs) set to zero, giving Î_l(n); then

    ĉ_GD(n) = E_D[(1/(L−1)) Σ_l |Î_l(n)|].

Only nodes below layer l see a changed gradient: a node in layer l has Î_l = 0 (all its
paths leave through l's writes) and a node above l has Î_l = Î. So for a node in layer m,
Σ_l |Î_l| = m·|Î| + Σ_{l>m} |Î_l|, and the backward with layer l cut is needed only when
some node lies below l — never for layer 0. Every backward reuses the one clean forward.
A one-layer model has no indirect paths to cut: there ĉ_GD = E_D |Î|.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from circuitgraph.attribution.sites import Site, node_effects
from circuitgraph.nodes import Node, layers_of
from circuitgraph.run import BatchRun

__all__ = ["abs_sum", "drop_layers", "score"]


def drop_layers(nodes: Sequence[Node], n_layers: int) -> tuple[int, ...]:
    """The layers whose cut changes some node's gradient: those above the lowest node.

    Example:
        >>> drop_layers([Node("head", 1, 0), Node("mlp", 2)], 4)
        (2, 3)
    """
    lowest = int(layers_of(nodes).min())
    return tuple(range(lowest + 1, n_layers))


def abs_sum(
    run: BatchRun,
    plain: Float[Tensor, "b n"],
    sites: Sequence[Site],
    drops: Sequence[int],
    nodes: Sequence[Node],
    n_layers: int,
    qk: Any,
) -> Float[Tensor, "b n"]:
    """Σ_l |Î_l(n)| per pair: m·|Î| for the layers below, one backward per layer above.

    Example:
        >>> sums = abs_sum(run, plain, sites, (1, 2), nodes, 3, None)  # doctest: +SKIP
    """
    if n_layers == 1:
        return plain.abs()
    below = layers_of(nodes).to(device=plain.device, dtype=plain.dtype)
    total = below * plain.abs()
    for layer in drops:
        total += node_effects(run, run.grads(layer), sites, qk, len(nodes), below=layer).abs()
    return total


def score(sums: Float[Tensor, " n"], n_pairs: int, n_layers: int) -> Float[Tensor, " n"]:
    """ĉ_GD = E_D[(1/(L−1)) Σ_l |Î_l|] from the summed per-pair Σ_l |Î_l|.

    Example:
        >>> score(torch.tensor([6.0]), n_pairs=2, n_layers=4).tolist()
        [1.0]
    """
    return sums / (n_pairs * max(n_layers - 1, 1))
