"""What an architecture is, as far as circuitgraph needs to know: the ONE module that spells
hook names.

Every hook point of a ``TransformerBridge`` that the library reads or writes is named here,
by role (a head's query, an MLP's output, the residual stream in front of a norm, ...), and
every node or edge target is mapped to the hook that carries it. No other module writes a
hook name; estimators ask this module where a node lives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Node

__all__ = [
    "HookSite",
    "TargetSite",
    "grad_hook",
    "hook_site",
    "hooks",
    "norm_input_hook",
    "qk_hooks",
    "residual_writes",
    "source_hook",
    "target_site",
]


class hooks:
    """Hook-point names of a ``TransformerBridge``, by role."""

    embed = "hook_embed"

    @staticmethod
    def resid_pre(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_pre"

    @staticmethod
    def resid_mid(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_mid"

    @staticmethod
    def z(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_z"

    @staticmethod
    def q(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_q"

    @staticmethod
    def k(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_k"

    @staticmethod
    def v(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_v"

    @staticmethod
    def rot_q(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_rot_q"

    @staticmethod
    def rot_k(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_rot_k"

    @staticmethod
    def rot_cos(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_cos"

    @staticmethod
    def rot_sin(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_sin"

    @staticmethod
    def pattern(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_pattern"

    @staticmethod
    def scores(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_attn_scores"

    @staticmethod
    def attn_out(layer: int) -> str:
        return f"blocks.{layer}.hook_attn_out"

    @staticmethod
    def mlp_out(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    @staticmethod
    def mlp_post(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    @staticmethod
    def ln2_out(layer: int) -> str:
        return f"blocks.{layer}.ln2.hook_out"

    @staticmethod
    def mlp_pre(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_pre"

    @staticmethod
    def norm_scale(layer: int, which: int) -> str:
        """The scale (the divisor) of layer ``layer``'s norm before attention (1) or MLP (2)."""
        return f"blocks.{layer}.ln{which}.hook_scale"

    final_in = "ln_final.hook_in"
    final_scale = "ln_final.hook_scale"


@dataclass(frozen=True)
class HookSite:
    """Where a node lives: a hook name, and the axis that indexes it in the hook's tensor.

    The hook tensor is ``[batch, pos, ...]``; ``head_axis`` (2 for z/q/k/v, None for mlp)
    or the last axis for neurons is indexed by ``node.index``.
    """

    name: str
    index: int | None  # head / KV head at axis 2, or neuron at axis 2; None = whole tensor


def hook_site(node: Node) -> HookSite:
    """The hook that carries a node's activation.

    Example:
        >>> hook_site(Node("k", 1, 0, grouped=True))
        HookSite(name='blocks.1.attn.hook_k', index=0)
    """
    k, layer = node.kind, node.layer
    if k == "head":
        return HookSite(hooks.z(layer), node.index)
    if k in ("q", "k", "v"):
        name = {"q": hooks.q, "k": hooks.k, "v": hooks.v}[k](layer)
        return HookSite(name, node.index)
    if k == "mlp":
        return HookSite(hooks.mlp_out(layer), None)
    if k == "neuron":
        return HookSite(hooks.mlp_post(layer), node.index)
    if k == "input":
        return HookSite(hooks.embed, None)
    raise ConfigError(f"the {k!r} node has no activation to patch; patch its sources instead")


@dataclass(frozen=True)
class TargetSite:
    """Where an edge target's input change lands.

    A shift of the residual stream in front of the target's norm (read at ``residual``) is
    applied at ``name``: a head's q/k/v after its projection (``index``: the head or KV
    head), an MLP's norm output, or the final residual for the logits (``residual`` None:
    no norm in between, the shift is added as it is). Going through the target's own norm
    and projection needs no per-head copy of the residual stream, so every bridge supports it.
    """

    name: str
    index: int | None
    residual: str | None


def target_site(node: Node) -> TargetSite:
    """Where an edge target's input is read and where a change to it is applied.

    Example:
        >>> target_site(Node("k", 2, 1))
        TargetSite(name='blocks.2.attn.hook_k', index=1, residual='blocks.2.hook_resid_pre')
    """
    if node.kind in ("q", "k", "v"):
        return TargetSite(hook_site(node).name, node.index, hooks.resid_pre(node.layer))
    if node.kind == "mlp":
        return TargetSite(hooks.ln2_out(node.layer), None, hooks.resid_mid(node.layer))
    if node.kind == "logits":
        return TargetSite(hooks.final_in, None, None)
    raise ConfigError(
        f"expected an edge target (a head's q/k/v input, an MLP or logits) but got {node.id}"
    )


def source_hook(node: Node) -> str:
    """The hook whose activation gives a source's output (heads: z, times W_O)."""
    if node.kind in ("input", "head", "mlp"):
        return hook_site(node).name
    raise ConfigError(f"expected an edge source (input, a head or an MLP) but got {node.id}")


def grad_hook(kind: str, layer: int) -> str:
    """Where the gradient of an edge target group is read: a head's q/k/v after its
    projection, an MLP's norm output, or the final residual for the logits.

    Example:
        >>> grad_hook("mlp", 2) == hooks.ln2_out(2)
        True
    """
    if kind in ("q", "k", "v"):
        return {"q": hooks.q, "k": hooks.k, "v": hooks.v}[kind](layer)
    return hooks.ln2_out(layer) if kind == "mlp" else hooks.final_in


def norm_input_hook(kind: str, layer: int) -> str | None:
    """The residual stream in front of a target's norm (None: the logits read it directly).

    Example:
        >>> norm_input_hook("k", 1) == hooks.resid_pre(1), norm_input_hook("logits", 0)
        (True, None)
    """
    if kind in ("q", "k", "v"):
        return hooks.resid_pre(layer)
    return hooks.resid_mid(layer) if kind == "mlp" else None


def qk_hooks(rotary: bool, layer: int) -> tuple[str, str]:
    """The query and key hooks whose dot product makes the attention scores (after rotation
    in rotary models).

    Example:
        >>> qk_hooks(False, 0) == (hooks.q(0), hooks.k(0))
        True
    """
    if rotary:
        return hooks.rot_q(layer), hooks.rot_k(layer)
    return hooks.q(layer), hooks.k(layer)


def residual_writes(layers: Iterable[int], available: set[str]) -> tuple[tuple[int, str], ...]:
    """(layer, hook) of the attention and MLP outputs of each layer, where the model has them.

    Example:
        >>> residual_writes([1], {hooks.attn_out(1)}) == ((1, hooks.attn_out(1)),)
        True
    """
    pairs = [(lay, name) for lay in layers for name in (hooks.attn_out(lay), hooks.mlp_out(lay))]
    return tuple((lay, name) for lay, name in pairs if name in available)
