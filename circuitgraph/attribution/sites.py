"""Sites: the nodes whose AtP effects are read from one place, and the effects themselves.

A site is a hook (Δ·∂L/∂act for every head, KV head, neuron or MLP there) or one layer's
QK fix (queries or keys). Each node's effect is gathered from its site into a dense
``[pairs, nodes]`` tensor, so no per-node Python object sits on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.arch import Arch, HookSite
from circuitgraph.errors import ConfigError, ModelStateError
from circuitgraph.nodes import NODE_KINDS, Node, NodeArray
from circuitgraph.run import BatchRun

__all__ = ["Site", "build_sites", "dot_effects", "gather", "node_effects", "site_key"]


# --------------------------------------------------------------------------------------
# Sites: the nodes read from one source of effects
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Nodes whose effects come from one place: a hook's Δ·∂L/∂act, or one layer's QK fix.

    ``key`` is the hook name, or ``qk:q:L`` / ``qk:k:L`` for QK-fixed queries and keys.
    ``whole_*`` index the all-position nodes, ``pos_*`` the per-position ones; ``out`` says
    where each sits in the result.
    """

    key: str
    kind: str
    layer: int
    whole_out: Tensor
    whole_idx: Tensor
    pos_out: Tensor
    pos_idx: Tensor
    pos_at: Tensor
    split: tuple[int, int] | None = None  # the hook holds heads flat: (heads, d_head)

    @property
    def has_whole(self) -> bool:
        return self.whole_out.numel() > 0

    @property
    def has_positions(self) -> bool:
        return self.pos_out.numel() > 0


def site_key(arch: Arch, node: Node, qk_fix: bool) -> str:
    """Where a node's effect is read: its hook, or its layer's QK fix.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> arch = Arch(ModelInfo("m", 3, 2, 2, 8, 4, 16, "LN", False, False, False, 10, 8))
        >>> site_key(arch, Node("q", 2, 1), qk_fix=True)
        'qk:q:2'
        >>> site_key(arch, Node("q", 2, 1), qk_fix=False) == arch.node_site(Node("q", 2, 1)).name
        True
    """
    if qk_fix and node.kind in ("q", "k"):
        return f"qk:{node.kind}:{node.layer}"
    return arch.node_site(node).name


def build_sites(
    arch: Arch, nodes: Sequence[Node], qk_fix: bool, device: torch.device
) -> list[Site]:
    """Group the nodes by where their effects are read (one site per hook or QK layer).

    Grouping works on the nodes' columns (:class:`~circuitgraph.nodes.NodeArray`): sorting
    one key per node, so hundreds of thousands of neurons cost no Python loop.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> arch = Arch(ModelInfo("m", 3, 4, 4, 8, 2, 16, "LN", False, False, False, 10, 8))
        >>> [s.key for s in build_sites(arch, [Node("q", 1, 0), Node("q", 1, 2)], True,
        ...                             torch.device("cpu"))]
        ['qk:q:1']
    """
    arr = nodes if isinstance(nodes, NodeArray) else NodeArray.of(_screened(nodes))
    keys = arr.layer * 8 + arr.kind  # one key per (layer, kind): one hook or QK layer
    # nodes in topological order (as enumerated) are sorted by that key already
    ordered = len(keys) < 2 or bool((keys[1:] >= keys[:-1]).all())
    order = torch.arange(len(keys)) if ordered else torch.argsort(keys, stable=True)
    _, counts = torch.unique_consecutive(keys[order], return_counts=True)
    sites = []
    for rows in order.split(counts.tolist()):
        first = arr[int(rows[0])]
        whole = rows[arr.position[rows] < 0]
        pos = rows[arr.position[rows] >= 0]

        def put(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=torch.long)

        key = site_key(arch, first, qk_fix)
        split = None if key.startswith("qk:") else arch.node_site(first).split
        sites.append(Site(
            key, first.kind, first.layer,
            put(whole), put(arr.unit[whole].clamp(min=0)),
            put(pos), put(arr.unit[pos].clamp(min=0)), put(arr.position[pos]), split,
        ))  # fmt: skip
    return sites


def _screened(nodes: Sequence[Node]) -> Sequence[Node]:
    for node in nodes:
        if node.kind not in NODE_KINDS:
            raise ConfigError(
                f"expected nodes of kinds {list(NODE_KINDS)} but got {node.id}; attribute its "
                "sources or targets instead"
            )
    return nodes


def gather(
    site: Site,
    out: Float[Tensor, "b n"],
    per_pos: Float[Tensor, "b t s"] | None,
    whole: Float[Tensor, "b s"] | None,
) -> None:
    """Write the site's node effects into ``out`` (nodes past a short batch's end get 0)."""
    if site.has_whole:
        assert whole is not None
        out[:, site.whole_out] = whole[:, site.whole_idx].to(out.dtype)
    if site.has_positions:
        assert per_pos is not None
        keep = site.pos_at < per_pos.shape[1]
        at, idx = site.pos_at[keep], site.pos_idx[keep]
        out[:, site.pos_out[keep]] = per_pos[:, at, idx].to(out.dtype)


# --------------------------------------------------------------------------------------
# The effect of a hook's nodes: (n(x_n) − n(x_c))ᵀ ∂L/∂n
# --------------------------------------------------------------------------------------


def dot_effects(
    kind: str, delta: Float[Tensor, "b t ..."], grad: Float[Tensor, "b t ..."]
) -> tuple[Float[Tensor, "b t s"], Float[Tensor, "b s"]]:
    """Per-position and all-position Î of every head / KV head / neuron (or the MLP) at a hook.

    Example:
        >>> per_pos, whole = dot_effects("head", torch.ones(1, 3, 2, 4), torch.ones(1, 3, 2, 4))
        >>> per_pos.shape, whole.tolist()
        (torch.Size([1, 3, 2]), [[12.0, 12.0]])
    """
    work = torch.promote_types(grad.dtype, torch.float32)
    prod = delta.to(work) * grad.to(work)
    if kind == "mlp":
        per_pos = prod.sum(-1, keepdim=True)
    elif kind == "neuron":
        per_pos = prod
    else:
        per_pos = prod.sum(-1)  # [b, t, heads, d_head] → per head
    return per_pos, per_pos.sum(1)


def site_grad(grads: dict[str, Tensor], name: str, cut: bool) -> Tensor | None:
    """The gradient at a hook, never a silent zero.

    In the plain backward every hook on the computation reports a gradient (zeros
    included); one that reports none fires beside the computation (a value recorded after
    the fact, as some bridges do for the attention pattern), and reading it as zero would
    be wrong, so that is refused. In a GradDrop backward (``cut``) a hook below the cut
    layer may legitimately see nothing: its effect is then exactly 0 (None).
    """
    if name in grads:
        return grads[name]
    if cut:
        return None
    raise ModelStateError(
        f"no gradient reaches {name} in this model (its hook fires beside the computation, "
        "not on it), so attribution there would be a silent zero; score those nodes with "
        "the node method 'exact' (discover --node-method exact, nodes --method exact)"
    )


def node_effects(
    run: BatchRun,
    grads: dict[str, Tensor],
    sites: Sequence[Site],
    qk: Any,
    n_nodes: int,
    below: int | None = None,
) -> Float[Tensor, "b n"]:
    """Î per pair for every node (only sites in layers < ``below`` when given; others 0).

    Example:
        >>> plain = node_effects(run, run.grads(None), sites, None, len(nodes))  # doctest: +SKIP
    """
    work = torch.promote_types(run.leaf.dtype, torch.float32)
    out = torch.zeros(run.leaf.shape[0], n_nodes, device=run.leaf.device, dtype=work)
    for site in sites:
        if below is not None and site.layer >= below:
            continue
        cut = below is not None
        if site.key.startswith("qk:"):
            if site_grad(grads, qk.grad_name(site), cut) is None:
                continue  # the cut layer blocks every path from this layer: Î = 0
            per_pos, whole = qk.effects(site, grads)
        else:
            grad = site_grad(grads, site.key, cut)
            if grad is None:
                continue
            view = HookSite(site.key, None, site.split).view
            per_pos, whole = dot_effects(site.kind, view(run.delta(site.key)), view(grad))
        gather(site, out, per_pos, whole)
    return out
