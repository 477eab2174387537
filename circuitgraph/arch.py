"""What an architecture is, as far as circuitgraph needs to know: the ONE module that spells
hook names and reads architecture facts.

:class:`Arch` describes one model: its shapes (:class:`~circuitgraph.model.ModelInfo`),
its block structure (parallel attention and MLP, which norms exist and where: pre, post,
shared, none, QK-norms per head or over all heads), its attention (rotary fraction and
style, scale, soft-cap, ALiBi, clipping of q/k/v) and which hook points actually fire.
It is read once per model (:meth:`Arch.of`, cached weakly) from the bridge's config, the
Hugging Face config and modules it wraps, and one probe forward on a few tokens: a hook
point that exists need not fire (several bridges register ``hook_rot_q`` and never call
it), so every fact about hooks is measured, not assumed.

Every hook point the library reads or writes is named here, by role, and every node, edge
source and edge target is mapped to the hook that carries it. Estimators ask an
:class:`Arch` where things live and never branch on a family name; this module itself
branches on facts (a module exists, a hook fires, a weight has this size), not on names.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitgraph.errors import ConfigError, ModelStateError
from circuitgraph.model import ModelInfo, model_info
from circuitgraph.nodes import Node, can_feed

__all__ = [
    "Arch",
    "HookSite",
    "Rotary",
    "TargetSite",
    "bridge_hooks",
    "hook_point",
    "hooks",
]


class hooks:
    """Hook-point names of a ``TransformerBridge``, by role."""

    embed = "hook_embed"
    final_in = "ln_final.hook_in"

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
    def q_normed(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_q_normed"

    @staticmethod
    def k_normed(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_k_normed"

    @staticmethod
    def qk_norm_in(kind: str, layer: int) -> str:
        return f"blocks.{layer}.attn.{kind}_norm.hook_in"

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
    def mlp_in(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_in"

    @staticmethod
    def mlp_out(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    @staticmethod
    def mlp_post(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    @staticmethod
    def mlp_pre(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_pre"

    @staticmethod
    def norm_scale(layer: int, which: int) -> str:
        """The scale (the divisor) of layer ``layer``'s norm before attention (1) or MLP (2)."""
        return f"blocks.{layer}.ln{which}.hook_scale"

    final_scale = "ln_final.hook_scale"


# --------------------------------------------------------------------------------------
# Where nodes and edge targets live
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookSite:
    """Where a node lives: a hook name, and the index of the node along the hook's axis 2.

    The hook tensor is ``[batch, pos, heads, d_head]`` (z, q, k, v) or ``[batch, pos,
    features]`` (an MLP's output, its neurons); ``index`` is the head, KV head or neuron,
    None for the whole tensor. ``split`` = (heads, d_head) when the hook holds the heads
    flat as ``[batch, pos, heads·d_head]`` (a QK-norm over all heads): :meth:`view` shows
    them as ``[batch, pos, heads, d_head]``.
    """

    name: str
    index: int | None
    split: tuple[int, int] | None = None

    def view(self, t: Tensor) -> Tensor:
        """The hook's tensor with heads on axis −2 (a view: writes go through).

        Example:
            >>> HookSite("x", 1, (2, 3)).view(torch.zeros(1, 4, 6)).shape
            torch.Size([1, 4, 2, 3])
        """
        return t.unflatten(-1, self.split) if self.split is not None else t


@dataclass(frozen=True)
class TargetSite:
    """Where an edge target's input change lands.

    A shift of the residual stream read at ``residual`` (in front of the target's norm) is
    applied at ``name``: a head's q/k/v (``index``: the head or KV head; ``split`` as in
    :class:`HookSite`), an MLP's input after its norm, or the final residual for the logits
    (``residual`` None: no norm in between, the shift is added as it is). Going through
    the target's own norm and projection needs no per-head copy of the residual stream.
    """

    name: str
    index: int | None
    residual: str | None
    split: tuple[int, int] | None = None

    def view(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, self.split) if self.split is not None else t


# --------------------------------------------------------------------------------------
# The description
# --------------------------------------------------------------------------------------

NormKind = Literal["own", "shared", "none"]
QKNorm = Literal["none", "per_head", "joint"]


@dataclass(frozen=True)
class Rotary:
    """Rotary position embedding: ``dim`` rotated features of each head (partial rotary:
    fewer than d_head, the rest pass through), in the rotate-half (GPT-NeoX, Llama) or
    interleaved (GPT-J) convention, with ``base`` θ."""

    dim: int
    style: Literal["half", "interleaved"]
    base: float


@dataclass(frozen=True)
class Arch:
    """One model's architecture: shapes, block structure, attention, and live hooks.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> a = Arch(ModelInfo("m", 2, 4, 2, 32, 8, 64, "RMS", True, True, True, 50, 32))
        >>> a.target_site(Node("mlp", 1)).residual == hooks.resid_pre(1)  # parallel block
        True
    """

    info: ModelInfo
    attn_norm: bool = True  # q/k/v read norm(x); False: the residual itself (OLMo2)
    mlp_norm: NormKind = "own"  # ln2 | the attention's ln1 (shared) | none (OLMo2)
    post_norm: bool = False  # attention and MLP writes pass a norm (Gemma2/3, OLMo2)
    qk_norm: QKNorm = "none"
    qk_norm_layout: Literal["bthd", "bhtd", "flat"] = "bthd"  # what the QK-norm module takes
    qkv_clip: float | None = None  # q, k, v clamped to ±clip after projection (OLMo)
    rotary: Rotary | None = None
    rot_hooks: bool = False  # hook_rot_q/k fire with q, k as the scores use them
    cos_hooks: bool = False  # hook_cos/sin fire with the rotary tables
    alibi: bool = False
    attn_scale: tuple[float, ...] = ()  # per layer; () = d_head^-½ everywhere
    attn_softcap: float | None = None  # scores → cap·tanh(scores/cap) (Gemma2)
    final_softcap: float | None = None
    biases: frozenset[str] = field(default_factory=frozenset)  # among q, k, v, o

    # ---- reading -----------------------------------------------------------------------

    @classmethod
    def of(cls, model: Any) -> Arch:
        """The description of ``model`` (a ``TransformerBridge``), read once and cached.

        Example:
            >>> arch = Arch.of(model)  # doctest: +SKIP
            >>> arch.parallel, arch.rotary  # doctest: +SKIP
            (True, Rotary(dim=4, style='half', base=10000.0))
        """
        if model not in _CACHE:
            _CACHE[model] = _read(model)
        return _CACHE[model]

    # ---- facts ---------------------------------------------------------------------------

    @property
    def parallel(self) -> bool:
        """Attention and MLP of a layer both read the residual stream before the layer."""
        return self.info.parallel_blocks

    @property
    def n_layers(self) -> int:
        return self.info.n_layers

    def scale(self, layer: int) -> float:
        """The factor of q·k in the attention scores of ``layer``."""
        if self.attn_scale:
            return self.attn_scale[layer]
        return self.info.d_head**-0.5

    def can_feed(self, src: Node, dst: Node) -> bool:
        """Whether ``src`` writes to the residual stream before ``dst`` reads it."""
        return can_feed(src, dst, self.parallel)

    # ---- nodes ---------------------------------------------------------------------------

    def node_site(self, node: Node) -> HookSite:
        """The hook that carries a node's activation.

        q/k nodes are the head's slice of the projection output (before clipping, a
        per-head QK-norm and rotary, which act on that slice alone, so patching before or
        after them is the same intervention); under a QK-norm over all heads jointly they
        are the head's slice of the norm's output, the only place where one head can be
        patched without moving the others.

        Example:
            >>> from circuitgraph.model import ModelInfo
            >>> Arch(ModelInfo("m", 2, 4, 2, 32, 8, 64, "RMS", True, True, False, 50, 32)
            ...      ).node_site(Node("k", 1, 0, grouped=True))
            HookSite(name='blocks.1.attn.hook_k', index=0, split=None)
        """
        k, layer = node.kind, node.layer
        if k == "head":
            return HookSite(hooks.z(layer), node.index)
        if k in ("q", "k") and self.qk_norm == "joint":
            name = (hooks.q_normed if k == "q" else hooks.k_normed)(layer)
            heads = self.info.n_heads if k == "q" else self.info.n_kv_heads
            return HookSite(name, node.index, (heads, self.info.d_head))
        if k in ("q", "k", "v"):
            return HookSite({"q": hooks.q, "k": hooks.k, "v": hooks.v}[k](layer), node.index)
        if k == "mlp":
            return HookSite(hooks.mlp_out(layer), None)
        if k == "neuron":
            self.check_neurons()
            return HookSite(hooks.mlp_post(layer), node.index)
        raise ConfigError(f"the {k!r} node has no activation to patch; patch its sources instead")

    def check_neurons(self) -> None:
        """Refuse neuron nodes where the MLP has no single neuron basis."""
        if self.info.moe:
            raise ModelStateError(
                "neuron nodes need one MLP per layer but this model routes each token to "
                "experts (mixture of experts); score whole MLPs (kind 'mlp') instead, heads, "
                "q/k/v, MLP nodes and every edge method still work"
            )

    # ---- edges ---------------------------------------------------------------------------

    def source_hook(self, node: Node) -> str:
        """The hook whose activation gives a source's output: the residual entering layer 0,
        a layer's z (heads: times W_O, through the post-norm where there is one), or the
        MLP's write as added to the residual."""
        if node.kind == "input":
            return hooks.resid_pre(0)
        if node.kind in ("head", "mlp"):
            return self.node_site(node).name
        raise ConfigError(f"expected an edge source (input, a head or an MLP) but got {node.id}")

    def target_site(self, node: Node) -> TargetSite:
        """Where an edge target's input is read and where a change to it is applied.

        Example:
            >>> from circuitgraph.model import ModelInfo
            >>> a = Arch(ModelInfo("m", 2, 4, 2, 32, 8, 64, "RMS", True, True, False, 50, 32))
            >>> a.target_site(Node("k", 1, 1)).residual == hooks.resid_pre(1)
            True
        """
        k, layer = node.kind, node.layer
        if k in ("q", "k", "v"):
            site = self.node_site(node)
            return TargetSite(site.name, site.index, hooks.resid_pre(layer), site.split)
        if k == "mlp":
            return TargetSite(hooks.mlp_in(layer), None, self.norm_input_hook("mlp", layer))
        if k == "logits":
            return TargetSite(hooks.final_in, None, None)
        raise ConfigError(
            f"expected an edge target (a head's q/k/v input, an MLP or logits) but got {node.id}"
        )

    def grad_hook(self, kind: str, layer: int) -> str:
        """Where the gradient of a target group is read (its target site)."""
        if kind == "logits":
            return hooks.final_in
        return self.target_site(Node(kind, layer, 0)).name  # type: ignore[arg-type]

    def norm_input_hook(self, kind: str, layer: int) -> str | None:
        """The residual stream a target reads (in front of its norm); None for the logits.

        Parallel blocks: the MLP reads the layer's input, like the attention.
        """
        if kind in ("q", "k", "v"):
            return hooks.resid_pre(layer)
        if kind == "mlp":
            return hooks.resid_pre(layer) if self.parallel else hooks.resid_mid(layer)
        return None

    def residual_writes(self, layers: Iterable[int]) -> tuple[tuple[int, str], ...]:
        """(layer, hook) of the attention and MLP writes of each layer (GradDrop cuts them).

        Example:
            >>> from circuitgraph.model import ModelInfo
            >>> a = Arch(ModelInfo("m", 2, 4, 2, 32, 8, 64, "RMS", True, True, False, 50, 32,
            ...                    attn_only=True))
            >>> a.residual_writes([1]) == ((1, hooks.attn_out(1)),)
            True
        """
        out = []
        for lay in layers:
            out.append((lay, hooks.attn_out(lay)))
            if not self.info.attn_only:
                out.append((lay, hooks.mlp_out(lay)))
        return tuple(out)

    # ---- attention: q and k as the scores use them -----------------------------------------

    def used_qk_hooks(self, layer: int) -> tuple[str, str] | None:
        """Hooks holding q and k exactly as the scores use them, or None when they must be
        computed from :meth:`raw_qk_hooks` (the bridge does not fire its rotary hooks)."""
        if self.rot_hooks:
            return hooks.rot_q(layer), hooks.rot_k(layer)
        if self.rotary is None and self.qk_norm == "none" and self.qkv_clip is None:
            return hooks.q(layer), hooks.k(layer)
        return None

    def raw_qk_hooks(self, layer: int) -> tuple[str, str]:
        """The q and k node hooks (before rotary; after a joint QK-norm)."""
        return self.node_site(Node("q", layer, 0)).name, self.node_site(Node("k", layer, 0)).name

    def cos_sin_hooks(self, layer: int) -> tuple[str, str] | None:
        """The rotary tables' hooks where they fire (else :meth:`cos_sin` computes them)."""
        if self.rotary is not None and self.cos_hooks:
            return hooks.rot_cos(layer), hooks.rot_sin(layer)
        return None

    def qk_hooks(self, layer: int) -> list[str]:
        """Every hook :meth:`used_qk` needs from a run of ``layer``."""
        used = self.used_qk_hooks(layer)
        if used is not None:
            return list(used)
        return [*self.raw_qk_hooks(layer), *(self.cos_sin_hooks(layer) or ())]

    def used_qk(
        self,
        model: Any,
        layer: int,
        acts: dict[str, Tensor],
        clean: dict[str, Tensor] | None = None,
    ) -> tuple[Float[Tensor, "b t h d"], Float[Tensor, "b s g d"]]:
        """q and k of ``layer`` as its scores use them (clipped, QK-normed, rotated), from
        the activations of one run (rotary tables from ``clean`` when given: positions are
        the same in both runs)."""
        used = self.used_qk_hooks(layer)
        if used is not None:
            return acts[used[0]], acts[used[1]]
        qn, kn = self.raw_qk_hooks(layer)
        q = self.node_site(Node("q", layer, 0)).view(acts[qn])
        k = self.node_site(Node("k", layer, 0)).view(acts[kn])
        table = acts if clean is None else clean
        cos, sin = self.cos_sin(model, layer, table, q.shape[1], q)
        return (
            self.rotate(self.pre_rotary(model, "q", layer, q, joint_done=True), cos, sin),
            self.rotate(self.pre_rotary(model, "k", layer, k, joint_done=True), cos, sin),
        )

    def pre_rotary(
        self, model: Any, kind: str, layer: int, x: Float[Tensor, "... t h d"], joint_done: bool
    ) -> Float[Tensor, "... t h d"]:
        """What happens to a projected q or k (all heads, bias included) before rotary:
        clipping, then the QK-norm (``joint_done``: a joint norm was applied already)."""
        if self.qkv_clip is not None:
            x = x.clamp(-self.qkv_clip, self.qkv_clip)
        if self.qk_norm == "none" or (self.qk_norm == "joint" and joint_done):
            return x
        return self.apply_qk_norm(model, kind, layer, x)

    def apply_qk_norm(
        self, model: Any, kind: str, layer: int, x: Float[Tensor, "... t h d"]
    ) -> Float[Tensor, "... t h d"]:
        """The QK-norm module of ``layer`` on q or k given as ``[..., t, heads, d_head]``."""
        norm = _original(getattr(model.blocks[layer].attn, f"{kind}_norm"))
        lead, (t, h, d) = x.shape[:-3], x.shape[-3:]
        flat = x.reshape(-1, t, h, d)
        if self.qk_norm_layout == "flat":
            out = norm(flat.reshape(-1, t, h * d)).view(-1, t, h, d)
        elif self.qk_norm_layout == "bhtd":
            out = norm(flat.transpose(1, 2)).transpose(1, 2)
        else:
            out = norm(flat)
        return out.reshape(*lead, t, h, d)

    def value(self, v: Float[Tensor, "b s g d"]) -> Float[Tensor, "b s g d"]:
        """v as the attention averages it (clipped where the model clips)."""
        return v if self.qkv_clip is None else v.clamp(-self.qkv_clip, self.qkv_clip)

    def cos_sin(
        self, model: Any, layer: int, acts: dict[str, Tensor], t: int, like: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """Rotary tables ``[1 or b, t, dim]`` of ``layer`` (None, None without rotary)."""
        if self.rotary is None:
            return None, None
        names = self.cos_sin_hooks(layer)
        if names is not None:
            return acts[names[0]], acts[names[1]]
        return _computed_tables(model, layer, self.rotary, t, like)

    def rotate(
        self, x: Float[Tensor, "... t h d"], cos: Tensor | None, sin: Tensor | None
    ) -> Float[Tensor, "... t h d"]:
        """Rotary embedding of q or k (``[..., t, heads, d_head]``); linear, so it maps a
        change of q to the change of the rotated q. ``cos``/``sin``: ``[1 or b, t, dim]``.

        Example:
            >>> from circuitgraph.model import ModelInfo
            >>> a = Arch(ModelInfo("m", 1, 1, 1, 4, 4, 8, "LN", True, False, False, 8, 8),
            ...          rotary=Rotary(2, "half", 1e4))
            >>> x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])  # partial: 2 of 4 features turn
            >>> a.rotate(x, torch.zeros(1, 1, 2), torch.ones(1, 1, 2)).tolist()
            [[[[-2.0, 1.0, 3.0, 4.0]]]]
        """
        if self.rotary is None or cos is None or sin is None:
            return x
        dim = self.rotary.dim
        turn, rest = x[..., :dim], x[..., dim:]
        if self.rotary.style == "half":
            half = dim // 2
            other = torch.cat([-turn[..., half:], turn[..., :half]], dim=-1)
        else:
            other = torch.stack([-turn[..., 1::2], turn[..., ::2]], dim=-1).flatten(-2)
        c, s = cos.to(x.dtype).unsqueeze(-2), sin.to(x.dtype).unsqueeze(-2)  # over heads
        return torch.cat([turn * c + other * s, rest], dim=-1)

    def softcap(self, raw: Tensor) -> Tensor:
        """Scores as the softmax takes them: soft-capped where the model caps them."""
        if self.attn_softcap is None:
            return raw
        return self.attn_softcap * torch.tanh(raw / self.attn_softcap)

    # ---- modules (the wrapped originals: calling them fires no hook point) ---------------

    def norm(self, model: Any, kind: str, layer: int) -> Any | None:
        """The norm in front of a target: the attention's for q/k/v, the MLP's (its own,
        or the attention's where shared), the final one for the logits; None: no norm."""
        if kind == "logits":
            return _original(model.ln_final)
        block = model.blocks[layer]
        if kind in ("q", "k", "v"):
            return _original(block.ln1) if self.attn_norm else None
        if self.mlp_norm == "none":
            return None
        return _original(block.ln2 if self.mlp_norm == "own" else block.ln1)

    def post_norm_module(self, model: Any, layer: int) -> Any | None:
        """The norm on the attention block's write (None where there is none)."""
        return _original(model.blocks[layer].ln1_post) if self.post_norm else None


#: model → its description (a probe forward each: read once per model)
_CACHE: weakref.WeakKeyDictionary[Any, Arch] = weakref.WeakKeyDictionary()


def _original(component: Any) -> Any:
    return getattr(component, "original_component", None) or component


# --------------------------------------------------------------------------------------
# Reading a model
# --------------------------------------------------------------------------------------


def _read(model: Any) -> Arch:
    """Read the description: shapes from the config and weights, structure from the
    modules present, hook facts from one probe forward, numbers from the HF config and the
    wrapped attention modules."""
    info = model_info(model)
    block = model.blocks[0]
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    attn = _original(block.attn)
    fired = _probe(model, info)
    has = {name for name, _ in block.named_children()}
    mlp_norm: NormKind = "own" if "ln2" in has else ("shared" if "ln1" in has else "none")
    arch = Arch(
        info,
        attn_norm="ln1" in has,
        mlp_norm=mlp_norm,
        post_norm="ln1_post" in has,
        qk_norm=_qk_norm(block, info),
        qk_norm_layout=_qk_layout(fired.get(hooks.qk_norm_in("q", 0)), info),
        qkv_clip=_number(hf_cfg, "clip_qkv"),
        rotary=_rotary(model, info, attn, hf_cfg, fired),
        rot_hooks=hooks.rot_q(0) in fired and hooks.rot_k(0) in fired,
        cos_hooks=hooks.rot_cos(0) in fired and hooks.rot_sin(0) in fired,
        alibi=str(getattr(model.cfg, "positional_embedding_type", "")) == "alibi",
        attn_scale=tuple(_scale(model, info, layer) for layer in range(info.n_layers)),
        attn_softcap=_softcap(getattr(attn, "attn_logit_softcapping", None))
        or _softcap(getattr(model.cfg, "attn_scores_soft_cap", None)),
        final_softcap=_softcap(getattr(model.cfg, "output_logits_soft_cap", None)),
        biases=frozenset(b for b in "qkvo" if _has_bias(model, b)),
    )
    return arch


_PROBED = ("rot_q", "rot_k", "rot_cos", "rot_sin", "resid_mid")


def _probe(model: Any, info: ModelInfo) -> dict[str, tuple[int, ...]]:
    """Shapes of the hooks of layer 0 that fire in one forward (existence ≠ firing)."""
    names = [getattr(hooks, n)(0) for n in _PROBED]
    names += [hooks.qk_norm_in("q", 0), hooks.q_normed(0)]
    names = [n for n in names if n in model.hook_dict]
    seen: dict[str, tuple[int, ...]] = {}

    def grab(name: str) -> Any:
        def hook(t: Tensor, hook: Any) -> None:
            seen[name] = tuple(t.shape)

        return hook

    # a length other than the head count, so [b, heads, t, d] and [b, t, heads, d] differ
    t = 3 if info.n_heads != 3 else 4
    device = next(iter(model.parameters())).device
    tokens = torch.arange(t, device=device).remainder(max(info.d_vocab, 1)).unsqueeze(0)
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
        model(tokens)
    return seen


def _qk_norm(block: Any, info: ModelInfo) -> QKNorm:
    norm = getattr(block.attn, "q_norm", None)
    if norm is None:
        return "none"
    weight = getattr(_original(norm), "weight", None)
    if weight is not None and weight.numel() == info.n_heads * info.d_head != info.d_head:
        return "joint"
    return "per_head"


def _qk_layout(shape: tuple[int, ...] | None, info: ModelInfo) -> Literal["bthd", "bhtd", "flat"]:
    if shape is None or (len(shape) == 4 and shape[2] == info.n_heads):
        return "bthd"
    return "flat" if len(shape) == 3 else "bhtd"


def _rotary(
    model: Any, info: ModelInfo, attn: Any, hf_cfg: Any, fired: dict[str, tuple[int, ...]]
) -> Rotary | None:
    if str(getattr(model.cfg, "positional_embedding_type", "")) != "rotary":
        return None
    # rotated width: the cos table's, else the module's or config's partial fraction
    dim = fired.get(hooks.rot_cos(0), (0,))[-1]
    if not dim:
        for key in ("rotary_dim", "rotary_ndims"):
            if isinstance(getattr(attn, key, None), int):
                dim = int(getattr(attn, key))
                break
    if not dim:
        fraction = _number(hf_cfg, "partial_rotary_factor") or _rope(hf_cfg).get(
            "partial_rotary_factor", 1.0
        )
        dim = int(info.d_head * float(fraction))
    # GPT-J keeps a sin/cos table of adjacent pairs (embed_positions): the interleaved
    # convention; HF exposes that only through the table's module
    style: Literal["half", "interleaved"] = (
        "interleaved" if _sincos_table(model) is not None else "half"
    )
    base = _number(hf_cfg, "rope_theta") or _rope(hf_cfg).get("rope_theta") or 10000.0
    return Rotary(int(dim), style, float(base))


def _rope(hf_cfg: Any) -> dict[str, Any]:
    params = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None)
    return dict(params) if isinstance(params, dict) else {}


def _computed_tables(
    model: Any, layer: int, rotary: Rotary, t: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """Rotary tables where the bridge fires none: the module's own sin/cos table (GPT-J)
    or the standard ones from θ (checked by the QK fix against the model's pattern)."""
    table = _sincos_table(model)
    dtype = torch.promote_types(like.dtype, torch.float32)
    if isinstance(table, Tensor) and table.shape[-1] == rotary.dim:
        sin, cos = table[:t].to(like.device, dtype).chunk(2, dim=-1)
    else:
        half = torch.arange(0, rotary.dim, 2, device=like.device, dtype=dtype) / rotary.dim
        angles = torch.arange(t, device=like.device, dtype=dtype)[:, None] / rotary.base**half
        sin, cos = angles.sin(), angles.cos()
    if rotary.style == "interleaved":
        sin, cos = sin.repeat_interleave(2, -1), cos.repeat_interleave(2, -1)
    else:
        sin, cos = torch.cat([sin, sin], -1), torch.cat([cos, cos], -1)
    return cos.unsqueeze(0), sin.unsqueeze(0)


def _sincos_table(model: Any) -> Tensor | None:
    """GPT-J's rotary table [positions, dim] = (sin | cos) of adjacent pairs, where the
    model has one."""
    root = getattr(model, "original_model", None)
    if not isinstance(root, torch.nn.Module):
        return None
    for module in root.modules():
        table = getattr(module, "embed_positions", None)
        if isinstance(table, Tensor) and table.dim() == 2:
            return table
    return None


def _scale(model: Any, info: ModelInfo, layer: int) -> float:
    """The factor of q·k in layer ``layer``'s scores, from its attention module or config
    (verified against the pattern by the QK fix before it is used)."""
    attn = _original(model.blocks[layer].attn)
    scale: float | None = None
    for key in ("scaling", "inv_norm_factor"):
        value = getattr(attn, key, None)
        if isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1):
            scale = float(value)
            break
    if scale is None and getattr(attn, "scale_attn", None) is not None:
        scale = 1.0 / float(attn.scale_attn)
    elif scale is not None:
        return scale  # a module's own scaling already holds any per-layer factor (GPT-2)
    if scale is None:
        cfg = model.cfg
        if getattr(cfg, "use_attn_scale", True) is False:
            scale = 1.0
        else:
            given = float(getattr(cfg, "attn_scale", -1.0) or -1.0)
            scale = 1.0 / given if given > 0 else info.d_head**-0.5
    if getattr(attn, "scale_attn_by_inverse_layer_idx", False):
        scale /= float(getattr(attn, "layer_idx", layer) or 0) + 1.0
    return scale if math.isfinite(scale) else info.d_head**-0.5


def _softcap(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _number(cfg: Any, key: str) -> float | None:
    value = getattr(cfg, key, None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _has_bias(model: Any, which: str) -> bool:
    try:
        bias = getattr(model, f"b_{which.upper()}")
    except (AttributeError, RuntimeError, KeyError):
        return False
    return isinstance(bias, Tensor) and bool(bias.detach().abs().max() > 0)


# --------------------------------------------------------------------------------------
# Hook points by name
# --------------------------------------------------------------------------------------

_POINTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def bridge_hooks(model: Any) -> bool:
    """Whether the model finds hook points by name as the TransformerBridge does (looked up
    on its class: the bridge's table of hook points is a property that builds it anew).

    Example:
        >>> bridge_hooks(torch.nn.Linear(1, 1))
        False
    """
    kind = type(model)
    return all(hasattr(kind, a) for a in ("_resolve_hook_point", "check_hooks_to_add"))


def hook_point(model: Any, name: str) -> Any:
    """The bridge's hook point for ``name`` (an alias resolves to its canonical point),
    refused as the bridge refuses it (unknown, not fired by this backend); looked up once
    per model and name, since the bridge builds its whole table for every lookup.

    Example:
        >>> hook_point(model, hooks.embed).name  # doctest: +SKIP
        'embed.hook_out'
    """
    points = _POINTS.setdefault(model, {})
    known = points.get(name)
    registry = getattr(model, "_hook_registry", None)
    if known is not None and registry is not None and registry.get(known.name) is not known:
        known = None  # the bridge re-registered its hook points: look the name up again
    if known is None:
        from transformer_lens.model_bridge.bridge_core import build_alias_to_canonical_map

        table = model.hook_dict
        aliases = build_alias_to_canonical_map(table)
        points[name] = model._resolve_hook_point(name, aliases, table)[1]
    return points[name]
