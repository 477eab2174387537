"""An independent reference for exact node and edge patching, written with plain
``transformers`` forward hooks and pre-hooks on the Hugging Face modules.

It knows nothing of TransformerLens or of circuitgraph's patching code: a per-family table
(:func:`model_map`) says which HF module carries each quantity, and everything else is
PyTorch hooks. It is the ground truth of the conformance matrix.

Definitions (noising: the corrupt value is written into the clean run; the metric is the
logit difference answer − wrong at the last position; an effect is metric(patched) −
metric(clean), per pair):

Nodes
  head h    head h's slice of the output projection's input (z_h, before W_O).
  q/k/v h   head h's (k, v: KV head h's) slice of the projection output, before rotary.
            Patching before or after rotary is the same intervention: rotary embedding
            depends only on the position, so the rotated patched q is the patched rotated
            q. A per-head QK-norm (Qwen3, Gemma3, StableLM) is likewise a function of the
            head's own slice, so before or after it is the same too. A QK-norm over all
            heads jointly (OLMo2) is not: there the node is the head's slice of the
            normalised query/key (the norm's output), the only per-head quantity that a
            patch of one head leaves the other heads untouched by.
  mlp       the MLP block's output as it is added to the residual stream (after a post-MLP
            norm where the family has one).
  neuron i  the i-th input of the down-projection (after the activation and any gating).
            Mixture-of-experts MLPs have no single neuron basis: refused.

Edges u → v: v's residual input is shifted by Δout_u = out_u(corrupt) − out_u(clean),
everything else runs on (the rest of the patched run is live).
  out_input  the residual stream entering layer 0 (all embeddings, scaled/normed as the
             family does).
  out_head   what head h adds to the residual: A(z_clean with z_h ← z_h') − A(z_clean),
             A = post-attention norm ∘ W_O (+ b_O). Without a post-norm this is exactly
             (z_h' − z_h)·W_O[h]: the output bias belongs to no head (it cancels in Δ).
             With a post-norm (Gemma2/3, OLMo2) the heads' writes do not add up; this is
             what the attention block adds when only head h changes, the same shift that
             node-patching head h causes.
  out_mlp    the MLP's output as added (after any post-norm).
  targets    q/k/v of a head: only that head's slice of that projection sees
             [QK-norm ∘] proj ∘ attn_norm(x + Δ); an MLP's input: norm(x + Δ) into the MLP
             (router included); logits: the final norm's input + Δ.
  parallel blocks: the attention and MLP of layer l both read the residual before layer
             l, so a head of layer l feeds no target of layer l (no attn→MLP edge).
A test-only source ``attn`` (a layer's whole attention write) checks sums of head edges.

Example:
    >>> ref = Reference(hf_model, pairs)  # doctest: +SKIP
    >>> ref.node(RefNode("head", 0, 1)).mean()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "LayerMap",
    "ModelMap",
    "RefEdge",
    "RefNode",
    "RefPairs",
    "Reference",
    "can_feed",
    "model_map",
]


# --------------------------------------------------------------------------------------
# Identities (duck-typed: circuitgraph's Node/Edge work too)
# --------------------------------------------------------------------------------------


class RefNode(NamedTuple):
    """kind in input/head/attn/q/k/v/mlp/neuron/logits; index: head, KV head or neuron."""

    kind: str
    layer: int = -1
    index: int | None = None
    position: int | None = None


class RefEdge(NamedTuple):
    src: Any
    dst: Any


@dataclass(frozen=True)
class RefPairs:
    """Same-length clean/corrupt token batches; the answer is read at the last position."""

    clean: Tensor
    corrupt: Tensor
    answer: Tensor
    wrong: Tensor

    def metric(self, logits: Tensor) -> Tensor:
        last = logits[:, -1].double()
        rows = torch.arange(last.shape[0])
        return last[rows, self.answer] - last[rows, self.wrong]


# --------------------------------------------------------------------------------------
# Where each quantity lives in a Hugging Face model (the only family-specific part)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerMap:
    """One decoder layer's modules.

    ``qkv[kind]`` is the module whose output holds that projection (one fused module may
    hold all three); ``qk_norm[kind]`` a QK-norm over all heads jointly, which moves the
    node to its output. ``mlp_in`` takes the MLP's input as its first argument;
    ``mlp_out``'s output is the MLP's output before any post-norm; ``down``'s input are
    the neurons.
    """

    layer: nn.Module
    attn_norm: nn.Module | None
    mlp_norm: nn.Module | None
    qkv: dict[str, nn.Module]
    o_proj: nn.Module
    mlp_in: nn.Module
    mlp_out: nn.Module
    down: nn.Module | None
    parallel: bool
    attn_post: nn.Module | None = None
    mlp_post: nn.Module | None = None
    qk_norm: dict[str, nn.Module] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelMap:
    model: nn.Module
    layers: list[LayerMap]
    final_norm: nn.Module
    n_heads: int
    n_kv: int
    d_head: int
    layout: str  # separate | concat | per_head_3 | falcon_grouped

    def cols(self, kind: str, index: int, joint_norm: bool = False) -> slice | Tensor:
        """Feature indices of head (or KV head) ``index``'s q/k/v in its site tensor."""
        d, h, g = self.d_head, self.n_heads, self.n_kv
        if self.layout == "separate" or joint_norm or kind == "head":
            return slice(index * d, (index + 1) * d)
        if self.layout == "concat":  # [q (h·d) | k (g·d) | v (g·d)]
            start = {"q": 0, "k": h * d, "v": (h + g) * d}[kind] + index * d
            return slice(start, start + d)
        if self.layout == "per_head_3":  # per head [q | k | v]
            start = index * 3 * d + {"q": 0, "k": d, "v": 2 * d}[kind]
            return slice(start, start + d)
        if self.layout == "falcon_grouped":  # per KV group [q_1 .. q_r | k | v]
            r = h // g
            group = index // r if kind == "q" else index
            within = index % r if kind == "q" else (r if kind == "k" else r + 1)
            start = (group * (r + 2) + within) * d
            return slice(start, start + d)
        raise ValueError(self.layout)


def _heads(cfg: Any) -> tuple[int, int, int]:
    h = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    g = getattr(cfg, "num_key_value_heads", None) or h
    width = getattr(cfg, "hidden_size", None) or cfg.n_embd
    d = getattr(cfg, "head_dim", None) or width // h
    return int(h), int(g), int(d)


def _llama_like(m: Any, *, parallel: bool = False) -> tuple[list[LayerMap], nn.Module]:
    """model.layers with input_layernorm / post_attention_layernorm (or pre/post-ff norms)."""
    out = []
    for lay in m.model.layers:
        a = lay.self_attn
        mlp_norm = getattr(lay, "pre_feedforward_layernorm", None)
        attn_post = mlp_post = None
        if mlp_norm is not None or hasattr(
            lay, "post_feedforward_layernorm"
        ):  # Gemma2/3: post-norms on both writes
            attn_post, mlp_post = lay.post_attention_layernorm, lay.post_feedforward_layernorm
        else:
            mlp_norm = lay.input_layernorm if parallel else lay.post_attention_layernorm
        qkv = (
            {"q": a.qkv_proj, "k": a.qkv_proj, "v": a.qkv_proj}
            if hasattr(a, "qkv_proj")
            else {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj}
        )
        joint = {}
        q_weight = getattr(getattr(a, "q_norm", None), "weight", None)
        if q_weight is not None and q_weight.numel() != _heads(m.config)[2]:
            joint = {"q": a.q_norm, "k": a.k_norm}  # a norm over all heads at once (OLMo2)
        down = getattr(lay.mlp, "down_proj", None) or getattr(lay.mlp, "fc2", None)
        o_proj = getattr(a, "o_proj", None) or a.dense
        attn_norm = getattr(lay, "input_layernorm", None)
        out.append(
            LayerMap(
                lay,
                attn_norm,
                mlp_norm,
                qkv,
                o_proj,
                lay.mlp,
                lay.mlp,
                down,
                parallel,
                attn_post,
                mlp_post,
                joint,
            )
        )
    final = getattr(m.model, "norm", None) or m.model.final_layernorm
    return out, final


def _gpt2_like(m: Any) -> tuple[list[LayerMap], nn.Module]:
    out = []
    for lay in m.transformer.h:
        c = lay.attn.c_attn
        out.append(
            LayerMap(
                lay,
                lay.ln_1,
                lay.ln_2,
                {"q": c, "k": c, "v": c},
                lay.attn.c_proj,
                lay.mlp,
                lay.mlp,
                lay.mlp.c_proj,
                False,
            )
        )
    return out, m.transformer.ln_f


def model_map(model: nn.Module) -> ModelMap:
    """The module table of a Hugging Face causal LM of a supported family."""
    cfg: Any = model.config
    kind = cfg.model_type
    h, g, d = _heads(cfg)
    layout = "separate"
    m: Any = model
    if kind in ("gpt2", "gpt_bigcode"):
        layers, final = _gpt2_like(m)
        if kind == "gpt2":
            layout = "concat"
        else:
            g = 1 if cfg.multi_query else h
            layout = "concat" if cfg.multi_query else "per_head_3"
    elif kind == "gpt_neox":
        layers = [
            LayerMap(lay, lay.input_layernorm, lay.post_attention_layernorm,
                     dict.fromkeys("qkv", lay.attention.query_key_value), lay.attention.dense,
                     lay.mlp, lay.mlp, lay.mlp.dense_4h_to_h, bool(cfg.use_parallel_residual))
            for lay in m.gpt_neox.layers
        ]  # fmt: skip
        final, layout = m.gpt_neox.final_layer_norm, "per_head_3"
    elif kind == "gptj":
        layers = [
            LayerMap(lay, lay.ln_1, lay.ln_1,
                     {"q": lay.attn.q_proj, "k": lay.attn.k_proj, "v": lay.attn.v_proj},
                     lay.attn.out_proj, lay.mlp, lay.mlp, lay.mlp.fc_out, True)
            for lay in m.transformer.h
        ]  # fmt: skip
        final = m.transformer.ln_f
    elif kind == "phi":
        layers, final = _llama_like(m, parallel=True)
    elif kind == "stablelm":
        layers, final = _llama_like(m, parallel=bool(cfg.use_parallel_residual))
    elif kind in ("phi3", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                  "gemma3_text", "olmo", "olmo2"):  # fmt: skip
        layers, final = _llama_like(m)
        if kind == "phi3":
            layout = "concat"
        if kind == "mixtral":  # experts: no single neuron basis
            layers = [_replace(lay, down=None) for lay in layers]
    elif kind == "opt":
        layers = [
            LayerMap(lay, lay.self_attn_layer_norm, lay.final_layer_norm,
                     {"q": lay.self_attn.q_proj, "k": lay.self_attn.k_proj,
                      "v": lay.self_attn.v_proj},
                     lay.self_attn.out_proj, lay.fc1, lay.fc2, lay.fc2, False)
            for lay in m.model.decoder.layers
        ]  # fmt: skip
        final = m.model.decoder.final_layer_norm
    elif kind == "bloom":
        layers = [
            LayerMap(lay, lay.input_layernorm, lay.post_attention_layernorm,
                     dict.fromkeys("qkv", lay.self_attention.query_key_value),
                     lay.self_attention.dense, lay.mlp, lay.mlp.dense_4h_to_h,
                     lay.mlp.dense_4h_to_h, False)
            for lay in m.transformer.h
        ]  # fmt: skip
        final, layout = m.transformer.ln_f, "per_head_3"
    elif kind == "falcon":
        layers, g, layout = _falcon(m)
        final = m.transformer.ln_f
    else:
        raise NotImplementedError(f"no reference map for model_type {kind!r}")
    return ModelMap(model, layers, final, h, g, d, layout)


def _falcon(m: Any) -> tuple[list[LayerMap], int, str]:
    cfg = m.config
    h = cfg.num_attention_heads
    new = bool(cfg.new_decoder_architecture)
    if new:
        g, layout = cfg.num_kv_heads, "falcon_grouped"
    elif cfg.multi_query:
        g, layout = 1, "concat"
    else:
        g, layout = h, "per_head_3"
    parallel = new or bool(cfg.parallel_attn)
    out = []
    for lay in m.transformer.h:
        two = hasattr(lay, "ln_attn")
        attn_norm = lay.ln_attn if two else lay.input_layernorm
        mlp_norm = lay.ln_mlp if two else (attn_norm if parallel else lay.post_attention_layernorm)
        fused = lay.self_attention.query_key_value
        out.append(
            LayerMap(lay, attn_norm, mlp_norm, dict.fromkeys("qkv", fused),
                     lay.self_attention.dense, lay.mlp, lay.mlp, lay.mlp.dense_4h_to_h, parallel)
        )  # fmt: skip
    return out, g, layout


def _replace(lay: LayerMap, **changes: Any) -> LayerMap:
    from dataclasses import replace

    return replace(lay, **changes)


# --------------------------------------------------------------------------------------
# Hook plumbing
# --------------------------------------------------------------------------------------


def _per_pair(scale: float | Tensor) -> float | Tensor:
    """A per-pair scale [b] as [b, 1, 1], to broadcast over positions and features."""
    return scale.view(-1, 1, 1) if isinstance(scale, Tensor) else scale


def _first(x: Any) -> Tensor:
    return x[0] if isinstance(x, tuple) else x


def _with_first(x: Any, new: Tensor) -> Any:
    return (new, *x[1:]) if isinstance(x, tuple) else new


class _Hooks:
    """Registered hooks, removed on exit; ``quiet`` silences them while the reference
    itself calls a hooked module (a norm or projection) from inside a hook."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.quiet = False

    def pre(self, mod: nn.Module, fn: Callable[[Tensor], Tensor | None]) -> None:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if self.quiet:
                return None
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
            new = fn(kwargs[key])
            return None if new is None else (args, {**kwargs, key: new})

        self.handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))

    def post(self, mod: nn.Module, fn: Callable[[Tensor], Tensor | None]) -> None:
        def hook(module: nn.Module, args: Any, out: Any) -> Any:
            if self.quiet:
                return None
            new = fn(_first(out))
            return None if new is None else _with_first(out, new)

        self.handles.append(mod.register_forward_hook(hook))

    @contextlib.contextmanager
    def silenced(self) -> Iterator[None]:
        self.quiet = True
        try:
            yield
        finally:
            self.quiet = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@contextlib.contextmanager
def _hooked() -> Iterator[_Hooks]:
    hooks = _Hooks()
    try:
        yield hooks
    finally:
        hooks.remove()


def can_feed(src: Any, dst: Any, parallel: bool) -> bool:
    """Whether src writes to the residual stream before dst reads it."""
    if src.kind == "input" or dst.kind == "logits":
        return True
    if src.kind in ("head", "attn") and dst.kind == "mlp" and not parallel:
        return src.layer <= dst.layer
    return src.layer < dst.layer


# --------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------


class Reference:
    """Exact patching on a Hugging Face model for one batch of prompt pairs."""

    def __init__(self, model: nn.Module, pairs: RefPairs) -> None:
        self.map = model_map(model.eval())
        self.pairs = pairs
        self.b, self.t = pairs.clean.shape
        with torch.no_grad():
            self.clean = self._capture(pairs.clean)
            self.corrupt = self._capture(pairs.corrupt)
        self.base = self.clean["metric"]
        self.alpha: float | None = None  # run at an interpolated input (see ``variant``)
        self.drop: int | None = None  # layer whose writes are detached (see ``variant``)

    @contextlib.contextmanager
    def variant(self, alpha: float | None = None, drop: int | None = None) -> Iterator[None]:
        """Runs inside the block: with ``alpha``, the input entering layer 0 is corrupt +
        alpha·(clean − corrupt) (EAP-IG's integration path; metrics are taken against that
        run); with ``drop``, layer ``drop``'s attention and MLP writes are detached, so no
        gradient passes through them (GradDrop) while every value stays the same."""
        old = self.alpha, self.drop
        self.alpha, self.drop = alpha, drop
        try:
            yield
        finally:
            self.alpha, self.drop = old

    def _variant_hooks(self, hk: _Hooks, last: bool = False) -> None:
        """The interpolated input (first: every later hook sees it) or, with ``last``, the
        detached writes (after any patch of the same module's output)."""
        if self.alpha is not None and not last:
            a = self.alpha
            start = self.corrupt["input"] + a * (self.clean["input"] - self.corrupt["input"])
            hk.pre(self.map.layers[0].layer, lambda x: start.reshape(x.shape).to(x.dtype))
        if self.drop is not None and last:
            lm = self.map.layers[self.drop]
            hk.post(lm.attn_post or lm.o_proj, lambda x: x.detach())
            hk.post(lm.mlp_post or lm.mlp_out, lambda x: x.detach())

    # ---- capture ----------------------------------------------------------------------

    def _btd(self, x: Tensor) -> Tensor:
        return x.reshape(self.b, self.t, -1)

    def _site(self, lm: LayerMap, kind: str) -> nn.Module:
        return lm.qk_norm.get(kind) or lm.qkv[kind]

    def _capture(self, tokens: Tensor) -> dict[Any, Tensor]:
        """Every quantity the patches need, from one forward of ``tokens``."""
        store: dict[Any, Tensor] = {}

        def keep(key: Any) -> Callable[[Tensor], None]:
            def fn(x: Tensor) -> None:
                store[key] = self._btd(x).detach().clone()  # clone: Falcon adds in place

            return fn

        with _hooked() as hk:
            for i, lm in enumerate(self.map.layers):
                hk.pre(lm.layer, keep(("resid_attn", i)))
                for kind in "qkv":
                    hk.post(self._site(lm, kind), keep((kind, i)))
                hk.pre(lm.o_proj, keep(("z", i)))
                hk.post(lm.attn_post or lm.o_proj, keep(("attn", i)))
                hk.post(lm.mlp_post or lm.mlp_out, keep(("mlp", i)))
                if lm.down is not None:
                    hk.pre(lm.down, keep(("neuron", i)))
            hk.pre(self.map.final_norm, keep("final_in"))
            logits = self.map.model(tokens).logits
        store["metric"] = self.pairs.metric(logits)
        store["input"] = store[("resid_attn", 0)]
        return store

    def _run(
        self, install: Callable[[_Hooks], None], z_of: int | None = None, grad: bool = False
    ) -> Tensor:
        """Metric change of the clean run with ``install``'s hooks (or, with ``z_of``, that
        layer's head outputs z in the patched run); ``grad`` keeps the autograd graph."""
        seen: dict[str, Tensor] = {}
        with torch.set_grad_enabled(grad), _hooked() as hk:
            self._variant_hooks(hk)
            install(hk)
            self._variant_hooks(hk, last=True)
            if z_of is not None:
                hk.pre(self.map.layers[z_of].o_proj, lambda x: seen.__setitem__("z", x.clone()))
            logits = self.map.model(self.pairs.clean).logits
        if z_of is not None:
            return self._btd(seen["z"])
        base = self.base if self.alpha is None else self._at_alpha()
        return self.pairs.metric(logits) - base

    def _at_alpha(self) -> Tensor:
        with torch.no_grad(), _hooked() as hk:
            self._variant_hooks(hk)
            return self.pairs.metric(self.map.model(self.pairs.clean).logits).detach()

    def z_grad(self, layer: int) -> Tensor:
        """∂(Σ_pairs metric)/∂z of ``layer`` [b, t, heads·d_head] at the clean run (each
        pair's row is its own gradient; inside ``variant(drop=l)`` with layer l's writes
        detached)."""
        leaf: dict[str, Tensor] = {}

        def make_leaf(x: Tensor) -> Tensor:
            leaf["z"] = x.detach().clone().requires_grad_(True)
            return leaf["z"]

        with torch.enable_grad(), _hooked() as hk:
            self._variant_hooks(hk)
            hk.pre(self.map.layers[layer].o_proj, make_leaf)
            self._variant_hooks(hk, last=True)
            metric = self.pairs.metric(self.map.model(self.pairs.clean).logits).sum()
            if not metric.requires_grad:
                return torch.zeros_like(self.clean[("z", layer)])
            (g,) = torch.autograd.grad(metric, leaf["z"], allow_unused=True)
        return torch.zeros_like(self.clean[("z", layer)]) if g is None else self._btd(g)

    # ---- nodes ------------------------------------------------------------------------

    def _node_where(self, node: Any) -> tuple[Any, slice | Tensor]:
        """(capture key, feature index) of a node."""
        i = node.index
        if node.kind == "head":
            return ("z", node.layer), self.map.cols("head", i)
        if node.kind in ("q", "k", "v"):
            lm = self.map.layers[node.layer]
            joint = node.kind in lm.qk_norm
            return (node.kind, node.layer), self.map.cols(node.kind, i, joint)
        if node.kind == "mlp":
            return ("mlp", node.layer), slice(None)
        if node.kind == "neuron":
            if self.map.layers[node.layer].down is None:
                raise NotImplementedError("a mixture-of-experts MLP has no single neuron basis")
            return ("neuron", node.layer), slice(i, i + 1)
        raise ValueError(f"{node.kind} is not a node with an activation")

    def _node_module(self, node: Any) -> tuple[nn.Module, bool]:
        """The module carrying the node, and whether it is that module's input."""
        lm = self.map.layers[node.layer]
        if node.kind == "head":
            return lm.o_proj, True
        if node.kind in ("q", "k", "v"):
            return self._site(lm, node.kind), False
        if node.kind == "mlp":
            return lm.mlp_post or lm.mlp_out, False
        assert lm.down is not None
        return lm.down, True

    def nodes(
        self, nodes: Sequence[Any], scale: float | Tensor = 1.0, z_of: int | None = None
    ) -> Tensor:
        """Effect per pair of patching all ``nodes`` jointly to clean + scale·(corrupt − clean)
        (with ``z_of``: that layer's z in the patched run instead, to check the layouts).

        ``scale`` may be a tensor of one scale per pair ([b]); if it requires a gradient,
        the run keeps the graph (see :meth:`grad`)."""
        grad = isinstance(scale, Tensor) and scale.requires_grad
        scale = _per_pair(scale)

        def install(hk: _Hooks) -> None:
            for node in nodes:
                key, cols = self._node_where(node)
                pos = slice(None) if node.position is None else node.position
                value = self.clean[key] + scale * (self.corrupt[key] - self.clean[key])
                mod, is_input = self._node_module(node)

                def edit(x: Tensor, key=key, cols=cols, pos=pos, value=value) -> Tensor:
                    y = self._btd(x).clone()
                    y[:, pos, cols] = value[:, pos, cols]
                    return y.reshape(x.shape)

                (hk.pre if is_input else hk.post)(mod, edit)

        return self._run(install, z_of, grad)

    def node(self, node: Any, scale: float | Tensor = 1.0) -> Tensor:
        return self.nodes([node], scale)

    # ---- edges ------------------------------------------------------------------------

    def out_delta(self, src: Any) -> Tensor:
        """Δout_u [b, t, d]: what the source adds to the residual, corrupt − clean."""
        if src.kind == "input":
            return self.corrupt["input"] - self.clean["input"]
        if src.kind in ("attn", "mlp"):
            key = (src.kind, src.layer)
            return self.corrupt[key] - self.clean[key]
        if src.kind == "head":
            lm = self.map.layers[src.layer]
            z = self.clean[("z", src.layer)]
            cols = self.map.cols("head", src.index)
            mixed = z.clone()
            mixed[:, :, cols] = self.corrupt[("z", src.layer)][:, :, cols]

            def write(zz: Tensor) -> Tensor:
                out = lm.o_proj(zz)
                return out if lm.attn_post is None else lm.attn_post(out)

            with torch.no_grad():
                return write(mixed) - write(z)
        raise ValueError(f"{src.kind} is not an edge source")

    def edges(
        self, edges: Sequence[Any], scale: float | Tensor = 1.0, z_of: int | None = None
    ) -> Tensor:
        """Effect per pair of patching all ``edges`` jointly: each target's input moves by
        scale · Σ Δout_u over its patched sources; everything else runs live (with
        ``z_of``: that layer's z in the patched run instead)."""
        grad = isinstance(scale, Tensor) and scale.requires_grad
        scale = _per_pair(scale)
        shifts: dict[Any, Tensor] = {}
        for e in edges:
            lm_par = self.map.layers[e.dst.layer].parallel if e.dst.kind != "logits" else False
            if not can_feed(e.src, e.dst, lm_par):
                raise ValueError(f"{e.src} does not feed {e.dst}")
            key = (e.dst.kind, e.dst.layer, e.dst.index)
            shifts[key] = shifts.get(key, 0) + scale * self.out_delta(e.src)

        def install(hk: _Hooks) -> None:
            live: dict[Any, Tensor] = {}
            for (kind, layer, index), shift in shifts.items():
                if kind == "logits":
                    hk.pre(self.map.final_norm, lambda x, s=shift: x + s.reshape(x.shape))
                elif kind == "mlp":
                    self._mlp_target(hk, live, layer, shift)
                else:
                    self._qkv_target(hk, live, kind, layer, index, shift)

        return self._run(install, z_of, grad)

    def edge(self, src: Any, dst: Any, scale: float | Tensor = 1.0) -> Tensor:
        return self.edges([RefEdge(src, dst)], scale)

    def _qkv_target(
        self, hk: _Hooks, live: dict, kind: str, layer: int, index: int, shift: Tensor
    ) -> None:
        lm = self.map.layers[layer]
        key = ("resid_attn", layer)
        if key not in live:
            hk.pre(lm.layer, lambda x: live.__setitem__(key, x))
        cols = self.map.cols(kind, index, kind in lm.qk_norm)

        def edit(out: Tensor) -> Tensor:
            x = live[key]
            with hk.silenced():
                moved = x + shift.reshape(x.shape)
                normed = moved if lm.attn_norm is None else lm.attn_norm(moved)
                site = lm.qkv[kind](normed)
                if kind in lm.qk_norm:
                    site = lm.qk_norm[kind](site)
            y = self._btd(out).clone()
            y[:, :, cols] = self._btd(site)[:, :, cols]
            return y.reshape(out.shape)

        hk.post(self._site(lm, kind), edit)

    def _mlp_target(self, hk: _Hooks, live: dict, layer: int, shift: Tensor) -> None:
        lm = self.map.layers[layer]
        if lm.parallel or lm.mlp_norm is None:
            # parallel: the MLP reads the layer's input; no pre-norm (OLMo2): its own input
            key = ("resid_attn", layer) if lm.parallel else None
            if key is not None and key not in live:
                hk.pre(lm.layer, lambda x: live.__setitem__(key, x))

            def edit(x: Tensor) -> Tensor:
                base = live[key] if key is not None else x
                moved = base + shift.reshape(base.shape)
                if lm.mlp_norm is None:
                    return moved.reshape(x.shape)
                with hk.silenced():
                    return lm.mlp_norm(moved).reshape(x.shape)

            hk.pre(lm.mlp_in, edit)
            return
        key = ("resid_mlp", layer)
        hk.pre(lm.mlp_norm, lambda x: live.__setitem__(key, x))

        def edit_seq(x: Tensor) -> Tensor:
            base = live[key]
            with hk.silenced():
                return lm.mlp_norm(base + shift.reshape(base.shape)).reshape(x.shape)  # type: ignore[misc]

        hk.pre(lm.mlp_in, edit_seq)

    # ---- derivatives ------------------------------------------------------------------

    @staticmethod
    def slope(effect: Callable[[float], Tensor], h: float = 1e-2) -> Tensor:
        """dI/dscale at 0 (what attribution patching estimates), per pair.

        Richardson-extrapolated central differences, error O(h⁴): steps large enough that
        float32 rounding inside the model (HF RMSNorms compute in float32 even in a
        float64 model) stays near 1e-7/h.

        Example:
            >>> Reference.slope(lambda s: torch.tensor([3 * s + s**3]))
            tensor([3.])
        """
        d1 = (effect(h) - effect(-h)) / (2 * h)
        d2 = (effect(h / 2) - effect(-h / 2)) / h
        return (4 * d2 - d1) / 3

    def grad(self, effect: Callable[[Tensor], Tensor]) -> Tensor:
        """dI/dscale at 0 per pair by autograd through the HF model: exactly what attribution
        patching computes (a discrete choice such as MoE routing is held fixed, as in AtP).

        Example:
            >>> ref.grad(lambda s: ref.node(RefNode("mlp", 0), s))  # doctest: +SKIP
        """
        dtype = next(self.map.model.parameters()).dtype
        s = torch.zeros(self.b, dtype=dtype, requires_grad=True)
        out = effect(s).sum()
        if not out.requires_grad:  # every path cut (a detached write): the derivative is 0
            return torch.zeros(self.b, dtype=torch.float64)
        (g,) = torch.autograd.grad(out, s, allow_unused=True)
        return torch.zeros(self.b, dtype=torch.float64) if g is None else g.double()

    def node_slope(self, node: Any, h: float = 1e-2) -> Tensor:
        return self.slope(lambda s: self.node(node, s), h)

    def edge_slope(self, src: Any, dst: Any, h: float = 1e-2) -> Tensor:
        return self.slope(lambda s: self.edge(src, dst, s), h)

    # ---- enumeration ------------------------------------------------------------------

    def sources(self) -> list[RefNode]:
        out = [RefNode("input")]
        for i in range(len(self.map.layers)):
            out += [RefNode("head", i, h) for h in range(self.map.n_heads)]
            out.append(RefNode("mlp", i))
        return out

    def targets(self) -> list[RefNode]:
        out = []
        for i in range(len(self.map.layers)):
            out += [RefNode("q", i, h) for h in range(self.map.n_heads)]
            out += [RefNode(k, i, h) for k in "kv" for h in range(self.map.n_kv)]
            out.append(RefNode("mlp", i))
        return [*out, RefNode("logits")]

    def all_edges(self) -> list[RefEdge]:
        return [
            RefEdge(s, t)
            for s in self.sources()
            for t in self.targets()
            if can_feed(s, t, t.kind != "logits" and self.map.layers[t.layer].parallel)
        ]
