"""Survey of every decoder family: what the TransformerBridge offers, and what circuitgraph
computes on it, against the independent reference (``tests/reference.py``).

For each tiny random family model of ``tests/families.py`` (loaded through
``circuitgraph.model.load_model`` like a user's directory) it records

* the bridge config facts the estimators would need (norms, rotary, parallel blocks, ...);
* for each hook role: whether it exists, fires in a forward, is *live* (editing it changes
  the logits) and equals the Hugging Face quantity the reference reads;
* whether ``W_Q/W_K/W_V/W_O`` reproduce the bridge's own q and the HF output projection;
* the rotary style and fraction and the attention scale that reproduce hook_attn_scores;
* today's estimators — nodes exact / atp / atp+qkfix / atp*, edges exact / eap / eap-ig /
  atp* — against the reference: exact patching compared directly, AtP and EAP against the
  reference's derivative at a vanishing perturbation (autograd through the HF model, see
  ``Reference.grad``), crashes with their one-line message;
* the same estimators on a twin-token model (corrupt = a vanishing perturbation of clean),
  where the QK fix and edge AtP* must agree with exact patching to first order.

    python -m benchmarks.arch_survey [FAMILY ...] [--json out.json]

Takes about 15 minutes on one core (one thread); ``--table FILE.json`` prints the compact
table of an earlier run. Uses the flat API (``cg.attribute_nodes``, ``cg.attribute_edges``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.families import D_VOCAB, FAMILIES, build, save_family  # noqa: E402
from tests.reference import Reference, RefNode, RefPairs  # noqa: E402

LAYER = 1  # the layer whose hooks are inspected (the last of two)
TWIN = 1e-3  # twin-token perturbation: a vanishing corrupt − clean difference


def make_pairs(n: int = 4, t: int = 8, seed: int = 0) -> RefPairs:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, D_VOCAB, (n, t), generator=g)
    clean[:, 0] = 2
    corrupt = clean.clone()
    for i in range(n):
        for j in torch.randint(1, t, (2,), generator=g).tolist():
            corrupt[i, j] = int(torch.randint(4, D_VOCAB, (1,), generator=g))
    ans = torch.randint(4, D_VOCAB, (n,), generator=g)
    wrong = torch.randint(4, D_VOCAB, (n,), generator=g)
    return RefPairs(clean, corrupt, ans, wrong)


def project_pairs(p: RefPairs) -> Any:
    from circuitgraph.tasks.pairs import PromptPairs

    return PromptPairs.from_tokens(p.clean.tolist(), p.corrupt.tolist(), p.answer.tolist(),
                                   p.wrong.tolist())  # fmt: skip


def one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0][:240] if text else type(err).__name__


# --------------------------------------------------------------------------------------
# Bridge facts
# --------------------------------------------------------------------------------------

CFG_KEYS = [
    "normalization_type", "final_rms", "positional_embedding_type", "rotary_dim",
    "rotary_adjacent_pairs", "rotary_interleaved_cos_sin", "rope_parameters",
    "parallel_attn_mlp", "use_parallel_residual", "n_key_value_heads", "use_attn_scale",
    "attn_scale", "attn_scores_soft_cap", "output_logits_soft_cap", "use_qk_norm",
    "use_normalization_before_and_after", "gated_mlp", "d_mlp", "rmsnorm_uses_offset",
    "window_size", "sliding_window", "attn_types", "use_local_attn", "num_experts",
    "post_embedding_ln", "attention_bias", "original_architecture",
]  # fmt: skip

ROLES = [
    "hook_embed", "hook_pos_embed", "blocks.{L}.hook_resid_pre", "blocks.{L}.ln1.hook_out",
    "blocks.{L}.attn.hook_q", "blocks.{L}.attn.hook_k", "blocks.{L}.attn.hook_v",
    "blocks.{L}.attn.hook_q_normed", "blocks.{L}.attn.hook_k_normed",
    "blocks.{L}.attn.hook_rot_q", "blocks.{L}.attn.hook_rot_k", "blocks.{L}.attn.hook_cos",
    "blocks.{L}.attn.hook_sin", "blocks.{L}.attn.hook_attn_scores",
    "blocks.{L}.attn.hook_pattern", "blocks.{L}.attn.hook_z", "blocks.{L}.hook_attn_out",
    "blocks.{L}.ln1_post.hook_out", "blocks.{L}.hook_resid_mid", "blocks.{L}.ln2.hook_in",
    "blocks.{L}.ln2.hook_out", "blocks.{L}.mlp.hook_in", "blocks.{L}.mlp.hook_pre",
    "blocks.{L}.mlp.hook_post", "blocks.{L}.hook_mlp_out", "blocks.{L}.ln2_post.hook_out",
    "blocks.{L}.hook_resid_post", "ln_final.hook_in",
]  # fmt: skip


def cfg_facts(bridge: Any) -> dict[str, Any]:
    cfg = bridge.cfg
    out = {}
    for k in CFG_KEYS:
        v = getattr(cfg, k, "<absent>")
        out[k] = v if isinstance(v, (int, float, str, bool, type(None), dict, list)) else str(v)
    return out


def _flat(x: Any, b: int, t: int) -> torch.Tensor | None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    if x.shape[0] == b and x.shape[1] == t:
        return x.reshape(b, t, -1)
    return None


def hook_table(bridge: Any, ref: Reference, tokens: torch.Tensor) -> dict[str, dict[str, Any]]:
    """exists / fires (shape) / live / equals-HF for each role at layer ``LAYER``."""
    names = [r.format(L=LAYER) for r in ROLES]
    b, t = tokens.shape
    fired: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Any:
        def fn(act: torch.Tensor, hook: Any) -> None:
            fired[name] = act.detach().clone()

        return fn

    present = [n for n in names if n in bridge.hook_dict]
    usable = []
    for n in present:
        try:
            with bridge.hooks(fwd_hooks=[(n, grab(n))]):
                pass
            usable.append(n)
        except Exception:  # needs a flag (use_hook_mlp_in, ...)
            pass
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, grab(n)) for n in usable]):
        base = bridge(tokens)
    hf = hf_quantities(ref, tokens)
    table: dict[str, dict[str, Any]] = {}
    for n in names:
        row: dict[str, Any] = {"exists": n in bridge.hook_dict}
        if n in present and n not in usable:
            row["fires"] = "needs a flag"
        elif n in fired:
            row["fires"] = list(fired[n].shape)
            row["live"] = _is_live(bridge, n, tokens, base)
            row["equals"] = _which_equals(_flat(fired[n], b, t), hf)
        else:
            row["fires"] = False if n in present else None
        table[n.replace(f".{LAYER}.", ".L.")] = row
    return table


def _is_live(bridge: Any, name: str, tokens: torch.Tensor, base: torch.Tensor) -> bool:
    """Does editing this hook's value change the logits (is it on the computed path)?"""

    def nudge(act: torch.Tensor, hook: Any) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return act + 0.5 * torch.randn(act.shape, generator=g).to(act)

    try:
        with torch.no_grad(), bridge.hooks(fwd_hooks=[(name, nudge)]):
            out = bridge(tokens)
        return bool((out - base).abs().max() > 1e-5)
    except Exception as err:
        return f"edit fails: {one_line(err)}"  # type: ignore[return-value]


def hf_quantities(ref: Reference, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """HF-side activations of layer LAYER for the clean tokens, [b, t, features]."""
    mp = ref.map
    lm = mp.layers[LAYER]
    store: dict[str, torch.Tensor] = {}
    b, t = tokens.shape
    handles = []

    def keep_out(name: str) -> Any:
        def fn(mod: Any, args: Any, out: Any) -> None:
            o = out[0] if isinstance(out, tuple) else out
            store[name] = o.detach().reshape(b, t, -1).clone()

        return fn

    def keep_in(name: str) -> Any:
        def fn(mod: Any, args: Any, kwargs: Any) -> None:
            x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
            store[name] = x.detach().reshape(b, t, -1).clone()

        return fn

    handles.append(lm.layer.register_forward_pre_hook(keep_in("resid_pre"), with_kwargs=True))
    handles.append(lm.qkv["q"].register_forward_hook(keep_out("qkv_q")))
    if lm.qkv["k"] is not lm.qkv["q"]:
        handles.append(lm.qkv["k"].register_forward_hook(keep_out("qkv_k")))
        handles.append(lm.qkv["v"].register_forward_hook(keep_out("qkv_v")))
    for kind, mod in lm.qk_norm.items():
        handles.append(mod.register_forward_hook(keep_out(f"{kind}_normed")))
    handles.append(lm.o_proj.register_forward_pre_hook(keep_in("z"), with_kwargs=True))
    handles.append(lm.o_proj.register_forward_hook(keep_out("o_proj_out")))
    if lm.attn_post is not None:
        handles.append(lm.attn_post.register_forward_hook(keep_out("attn_post_out")))
    if lm.attn_norm is not None:
        handles.append(lm.attn_norm.register_forward_hook(keep_out("attn_norm_out")))
    if lm.mlp_norm is not None and not lm.parallel:
        handles.append(
            lm.mlp_norm.register_forward_pre_hook(keep_in("resid_mid"), with_kwargs=True)
        )
    handles.append(lm.mlp_in.register_forward_pre_hook(keep_in("mlp_input"), with_kwargs=True))
    handles.append(lm.mlp_out.register_forward_hook(keep_out("mlp_out")))
    if lm.mlp_post is not None:
        handles.append(lm.mlp_post.register_forward_hook(keep_out("mlp_post_out")))
    if lm.down is not None:
        handles.append(lm.down.register_forward_pre_hook(keep_in("neurons"), with_kwargs=True))
    handles.append(mp.final_norm.register_forward_pre_hook(keep_in("final_in"), with_kwargs=True))
    try:
        with torch.no_grad():
            mp.model(tokens)
    finally:
        for h in handles:
            h.remove()
    fused = store.pop("qkv_q")
    if "qkv_k" in store:
        store["q_proj"], store["k_proj"], store["v_proj"] = (
            fused, store.pop("qkv_k"), store.pop("qkv_v"))  # fmt: skip
    else:
        for kind, n in (("q", mp.n_heads), ("k", mp.n_kv), ("v", mp.n_kv)):
            idx = torch.cat([torch.arange(fused.shape[-1])[mp.cols(kind, i)] for i in range(n)])
            store[f"{kind}_proj"] = fused[..., idx]
    return {k: v.double() for k, v in store.items()}


def _which_equals(x: torch.Tensor | None, hf: dict[str, torch.Tensor]) -> list[str]:
    if x is None:
        return []
    x = x.double()
    return [
        k for k, v in hf.items()
        if v.shape == x.shape and float((v - x).abs().max()) <= 1e-4 * (1 + float(v.abs().max()))
    ]  # fmt: skip


def weight_checks(bridge: Any, ref: Reference, tokens: torch.Tensor) -> dict[str, Any]:
    """Do W_Q/b_Q reproduce hook_q from the norm output, and W_O/b_O the HF o_proj output?"""
    out: dict[str, Any] = {}
    for w in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_O", "W_in", "W_out"):
        try:
            out[w] = list(getattr(bridge, w).shape)
        except Exception as err:
            out[w] = f"error: {one_line(err)}"
    acts: dict[str, torch.Tensor] = {}
    names = [f"blocks.{LAYER}.attn.hook_q", f"blocks.{LAYER}.attn.hook_z",
             f"blocks.{LAYER}.ln1.hook_out", f"blocks.{LAYER}.hook_resid_pre"]  # fmt: skip
    names = [n for n in names if n in bridge.hook_dict]

    def grab(n: str) -> Any:
        return lambda a, hook: acts.__setitem__(n, a.detach().double())

    try:
        with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
            bridge(tokens)
        hf = hf_quantities(ref, tokens)
        x = acts.get(f"blocks.{LAYER}.ln1.hook_out", acts.get(f"blocks.{LAYER}.hook_resid_pre"))
        wq = bridge.W_Q[LAYER].double()
        q = torch.einsum("btd,hde->bthe", x, wq) + _bias(bridge, "b_Q")
        out["x@W_Q+b_Q == hook_q"] = _close(q, acts[f"blocks.{LAYER}.attn.hook_q"])
        z = acts[f"blocks.{LAYER}.attn.hook_z"]
        o = torch.einsum("bthe,hed->btd", z, bridge.W_O[LAYER].double()) + _bias(bridge, "b_O")
        out["z@W_O+b_O == HF o_proj out"] = _close(o, hf["o_proj_out"])
    except Exception as err:
        out["check"] = f"error: {one_line(err)}"
    return out


def _bias(bridge: Any, name: str) -> torch.Tensor | float:
    try:
        return getattr(bridge, name)[LAYER].double()
    except AttributeError:  # the bridge raises for bias-free projections
        return 0.0


def _close(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.numel() != b.numel():
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    d = float((a.reshape(-1) - b.reshape(-1)).abs().max())
    return "yes" if d <= 1e-4 * (1 + float(b.abs().max())) else f"no (max diff {d:.2e})"


def scores_model(bridge: Any, tokens: torch.Tensor) -> dict[str, Any]:
    """Which rotary style/fraction and scale turn hook_q/hook_k into hook_attn_scores?"""
    acts: dict[str, torch.Tensor] = {}
    names = [
        f"blocks.{LAYER}.attn.hook_{n}"
        for n in ("q", "k", "q_normed", "k_normed", "attn_scores", "pattern", "cos", "sin")
    ]
    names = [n for n in names if n in bridge.hook_dict]

    def grab(n: str) -> Any:
        return lambda a, hook: acts.__setitem__(n.rsplit(".", 1)[1][5:], a.detach().double())

    with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
        bridge(tokens)
    if "attn_scores" not in acts or "q" not in acts:
        return {"fit": "no scores/q hooks fire"}
    s = acts["attn_scores"]
    pattern_equals_scores = "pattern" in acts and torch.equal(acts["pattern"], s)
    if pattern_equals_scores:
        s = acts["pattern"].clamp(min=1e-300).log()
    q, k = acts["q"], acts["k"]
    h, g = q.shape[2], k.shape[2]
    best: dict[str, Any] = {"pattern_at_scores_hook": pattern_equals_scores}
    t = q.shape[1]
    allowed = torch.ones(t, t, dtype=torch.bool).tril() & (s[0, 0] > -1e30)
    cands = []
    d = q.shape[-1]
    cos_sin = ("cos" in acts) and ("sin" in acts)
    for style in ["none", "half", "interleaved"]:
        for frac in [1.0, 0.5, 0.25]:
            if style == "none" and frac != 1.0:
                continue
            rd = int(d * frac)
            qq, kk = _rotate(q, style, rd), _rotate(k, style, rd)
            if qq is None:
                continue
            dots = torch.einsum("bthe,bsge->bhgts", qq, kk)
            dots = dots[:, torch.arange(h), torch.arange(h) // (h // g)]
            x, y = _centre(dots, allowed), _centre(s, allowed)
            if float((x * x).sum()) == 0:
                continue
            c = float((x * y).sum() / (x * x).sum())
            resid = float((c * x - y).abs().max() / (y.abs().max() + 1e-12))
            cands.append((resid, style, frac, c))
    if not cands:
        return best
    cands.sort()
    resid, style, frac, c = cands[0]
    best.update(style=style, fraction=frac, scale=round(c, 5), rel_resid=f"{resid:.1e}",
                d_head_inv_sqrt=round(d**-0.5, 5), cos_width=(
                    list(acts["cos"].shape)[-1] if cos_sin else None))  # fmt: skip
    return best


def _rotate(x: torch.Tensor, style: str, rd: int) -> torch.Tensor | None:
    if style == "none":
        return x
    t = x.shape[1]
    inv = 1.0 / (10000 ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]  # [t, rd/2]
    rot, rest = x[..., :rd], x[..., rd:]
    if style == "half":
        cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None]
        sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None]
        half = rd // 2
        turned = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    else:
        cos = ang.cos().repeat_interleave(2, -1)[None, :, None]
        sin = ang.sin().repeat_interleave(2, -1)[None, :, None]
        turned = torch.stack([-rot[..., 1::2], rot[..., 0::2]], -1).flatten(-2)
    return torch.cat([rot * cos + turned * sin, rest], -1)


def _centre(x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    a = allowed.expand_as(x)
    n = a.sum(-1, keepdim=True).clamp(min=1)
    mean = x.masked_fill(~a, 0).sum(-1, keepdim=True) / n
    return (x - mean)[a]


# --------------------------------------------------------------------------------------
# Estimators against the reference
# --------------------------------------------------------------------------------------


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() < 3:
        return float("nan")
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den else float("nan")


def compare(est: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """max |est − truth| relative to max |truth|, sign agreement, Spearman, exact zeros."""
    est, truth = est.double(), truth.double()
    scale = float(truth.abs().max()) or 1.0
    nz = truth.abs() > 1e-3 * scale
    return {
        "rel_err": float((est - truth).abs().max()) / scale,
        "spearman": round(spearman(est, truth), 3),
        "sign_agree": round(float((est[nz].sign() == truth[nz].sign()).double().mean()), 3)
        if nz.any() else None,
        "zero_where_nonzero": int(((est == 0) & nz).sum()),
    }  # fmt: skip


def node_list(info: Any, n_neurons: int = 8) -> list[Any]:
    from circuitgraph.nodes import Node, enumerate_nodes

    nodes = enumerate_nodes(info, ("head", "q", "k", "v", "mlp"))
    nodes += [Node("neuron", layer, i) for layer in range(info.n_layers) for i in range(n_neurons)]
    return nodes


def by_kind(nodes: list[Any], f: Any) -> dict[str, Any]:
    out = {}
    for kind in ("head", "q", "k", "v", "mlp", "neuron"):
        idx = [i for i, n in enumerate(nodes) if n.kind == kind]
        if idx:
            out[kind] = f(torch.tensor(idx))
    return out


def node_survey(bridge: Any, info: Any, ref: Reference, pp: Any) -> dict[str, Any]:
    from circuitgraph import attribute_nodes

    nodes = node_list(info)
    if ref.map.layers[0].down is None:
        nodes = [n for n in nodes if n.kind != "neuron"]
    exact = torch.stack([ref.node(n).mean() for n in nodes])
    fd = torch.stack([ref.grad(lambda s, n=n: ref.node(n, s)).mean() for n in nodes])
    out: dict[str, Any] = {"ref_exact_max": float(exact.abs().max())}
    # how linear the model itself is: the reference's derivative against its exact effect
    out["reference: slope vs exact"] = by_kind(nodes, lambda i: compare(fd[i], exact[i]))
    for method, truth in (("exact", exact), ("atp", fd), ("atp+qkfix", exact), ("atp*", exact)):
        try:
            scores = attribute_nodes(bridge, pp, "logit_diff", method=method, nodes=nodes)
            got = scores.signed.double()
            out[method] = by_kind(nodes, lambda i, g=got, t=truth: compare(g[i], t[i]))
            if method == "atp+qkfix":  # the QK fix against exact on q/k; plain AtP against FD too
                out["atp+qkfix vs FD"] = by_kind(nodes, lambda i, g=got: compare(g[i], fd[i]))
        except Exception as err:
            out[method] = {"error": one_line(err), "where": _where(err)}
    return out


def edge_survey(bridge: Any, info: Any, ref: Reference, pp: Any) -> dict[str, Any]:
    from circuitgraph import attribute_edges
    from circuitgraph.attribution import EdgeSet, get_estimator
    from circuitgraph.run import resolve

    out: dict[str, Any] = {}
    cands = EdgeSet.full(info)
    edges = cands.edges()
    valid = [e for e in edges if _ref_valid(ref, e)]
    out["project_edges"] = len(edges)
    out["edges_the_project_lists_that_do_not_exist"] = [
        e.id for e in edges if not _ref_valid(ref, e)
    ][:6]
    exact = torch.stack([ref.edge(e.src, e.dst).mean() for e in valid])
    fd = torch.stack([ref.grad(lambda s, e=e: ref.edge(e.src, e.dst, s)).mean() for e in valid])
    for method, truth in (("exact", exact), ("eap", fd), ("eap-ig", exact), ("atp*", exact)):
        try:
            scores = attribute_edges(bridge, pp, "logit_diff", method=method, candidates=cands)
            out[method] = _edge_compare(scores, valid, truth)
        except Exception as err:
            out[method] = {"error": one_line(err), "where": _where(err)}
            if "parallel" in str(err):  # what the estimator would give if not refused
                try:
                    pairs, metric, opts = resolve(bridge, pp, "logit_diff")
                    scores = get_estimator(method, "edge")(bridge, pairs, cands, metric, opts)
                    out[method + " (refusal bypassed)"] = _edge_compare(scores, valid, truth)
                except Exception as err2:
                    out[method + " (refusal bypassed)"] = {
                        "error": one_line(err2), "where": _where(err2)}  # fmt: skip
    return out


def _ref_valid(ref: Reference, e: Any) -> bool:
    from tests.reference import can_feed

    par = e.dst.kind != "logits" and ref.map.layers[e.dst.layer].parallel
    return can_feed(e.src, e.dst, par)


def _edge_compare(scores: Any, valid: list[Any], truth: torch.Tensor) -> dict[str, Any]:
    got = torch.tensor([scores[e][0] for e in valid], dtype=torch.float64)
    kinds = {}
    for kind in ("q", "k", "v", "mlp", "logits"):
        idx = [i for i, e in enumerate(valid) if e.dst.kind == kind]
        if idx:
            i = torch.tensor(idx)
            kinds[kind] = compare(got[i], truth[i])
    return kinds


def _where(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    ours = [f for f in tb if "circuitgraph" in f.filename]
    f = (ours or tb)[-1]
    return f"{Path(f.filename).name}:{f.name}:{f.lineno}"


# --------------------------------------------------------------------------------------
# Gemma-style question: linearity along the corrupt direction
# --------------------------------------------------------------------------------------


def linearity(ref: Reference, nodes: list[Any]) -> dict[str, Any]:
    """dI/dε at 0, then I(ε)/ε for ε in (0.1, 0.5, 1): AtP is the first, exact patching the last."""
    out = {}
    for n in nodes:
        vals = [float(ref.grad(lambda s, n=n: ref.node(n, s)).mean())]
        vals += [float(ref.node(n, e).mean()) / e for e in (0.1, 0.5, 1.0)]
        out[str(n)] = [round(v, 5) for v in vals]
    return out


def survey(name: str) -> dict[str, Any]:
    from circuitgraph.model import load_model

    rec: dict[str, Any] = {"family": name, "exercises": FAMILIES[name].exercises}
    p = make_pairs()
    hf = build(name)
    ref = Reference(hf, p)  # its autograd derivative is exact to float32 rounding
    with tempfile.TemporaryDirectory() as d:
        save_family(name, d)
        try:
            bridge, info = load_model(d, device="cpu")
        except Exception as err:
            rec["load"] = {"error": one_line(err), "where": _where(err)}
            return rec
    with torch.no_grad():
        rec["logits_vs_hf_max_diff"] = float((bridge(p.clean) - hf(p.clean).logits).abs().max())
    rec["info"] = {k: v for k, v in vars(info).items()}
    rec["cfg"] = cfg_facts(bridge)
    rec["hooks"] = hook_table(bridge, ref, p.clean)
    rec["weights"] = weight_checks(bridge, ref, p.clean)
    neurons = ref.clean.get(("neuron", 0))
    rec["d_mlp"] = {"project": info.d_mlp, "model": None if neurons is None else neurons.shape[-1]}
    rec["scores"] = scores_model(bridge, p.clean)
    pp = project_pairs(p)
    rec["nodes"] = node_survey(bridge, info, ref, pp)
    rec["edges"] = edge_survey(bridge, info, ref, pp)
    rec["linearity"] = linearity(
        ref, [RefNode("head", 0, 0), RefNode("q", 0, 1), RefNode("k", 1, 0), RefNode("mlp", 0)]
    )
    rec["twin"] = twin_survey(name)
    return rec


def twin_pairs(p: RefPairs) -> RefPairs:
    """The same clean prompts; corrupt = every word past the BOS swapped for its twin."""
    from tests.families import TWIN_OFFSET

    clean = p.clean.clone()
    clean[:, 1:] = 4 + (clean[:, 1:] - 4) % TWIN_OFFSET
    corrupt = clean.clone()
    corrupt[:, 1:] += TWIN_OFFSET
    return RefPairs(clean, corrupt, p.answer, p.wrong)


def twin_survey(name: str) -> dict[str, Any]:
    """At a vanishing perturbation (twin tokens) every estimate must equal exact patching to
    first order: AtP, the QK fix and AtP* on nodes; EAP, EAP-IG and edge AtP* on edges."""
    from circuitgraph import attribute_edges, attribute_nodes, load_model
    from circuitgraph.attribution import EdgeSet

    out: dict[str, Any] = {}
    p = twin_pairs(make_pairs())
    with tempfile.TemporaryDirectory() as d:
        save_family(name, d, twin=TWIN)
        bridge, info = load_model(d, device="cpu")
    pp = project_pairs(p)
    nodes = node_list(info)
    try:
        exact = attribute_nodes(bridge, pp, "logit_diff", method="exact", nodes=nodes).signed
    except Exception as err:
        return {"exact": {"error": one_line(err), "where": _where(err)}}
    for method in ("atp", "atp+qkfix", "atp*"):
        try:
            got = attribute_nodes(bridge, pp, "logit_diff", method=method, nodes=nodes).signed
            out["N " + method] = by_kind(nodes, lambda i, g=got: compare(g[i], exact[i]))
        except Exception as err:
            out["N " + method] = {"error": one_line(err), "where": _where(err)}
    cands = EdgeSet.full(info)
    try:
        truth = attribute_edges(bridge, pp, "logit_diff", method="exact", candidates=cands)
    except Exception as err:
        out["E exact"] = {"error": one_line(err), "where": _where(err)}
        return out
    valid = cands.edges()
    truth_t = torch.tensor([truth[e][0] for e in valid], dtype=torch.float64)
    for method in ("eap", "eap-ig", "atp*"):
        try:
            got = attribute_edges(bridge, pp, "logit_diff", method=method, candidates=cands)
            out["E " + method] = _edge_compare(got, valid, truth_t)
        except Exception as err:
            out["E " + method] = {"error": one_line(err), "where": _where(err)}
    return out


# --------------------------------------------------------------------------------------
# The compact table
# --------------------------------------------------------------------------------------


def _cell(d: Any, tol: float) -> str:
    """✓ when every kind agrees with the truth to ``tol`` (relative to the largest effect),
    else the worst kind, or the error's first words."""
    if d is None:
        return "-"
    if "error" in d:
        return "✗ " + d["error"].split(":")[0] + " (" + d.get("where", "").split(":")[0] + ")"
    worst = max(d.items(), key=lambda kv: kv[1]["rel_err"])
    zeros = sum(v["zero_where_nonzero"] for v in d.values())
    if zeros:
        return f"✗ {zeros} exact zeros"
    if worst[1]["rel_err"] <= tol:
        return "✓"
    return f"≠ {worst[0]} {worst[1]['rel_err']:.0e}"


def table(records: list[dict[str, Any]]) -> str:
    """One row per family: exact and AtP/EAP against the reference (tolerance 1e-4), the QK
    fix / AtP* / EAP-IG against exact patching at a vanishing perturbation (twin tokens,
    tolerance 0.1: first order only)."""
    head = ("| family | load | N exact | N atp | N atp+qkfix† | N atp*† | E exact | E eap | "
            "E eap-ig† | E atp*† |")  # fmt: skip
    rows = [head, "|" + "---|" * 10]
    for r in records:
        if "crash" in r or "load" in r:
            err = r.get("crash") or r["load"]["error"]
            rows.append(f"| {r['family']} | ✗ {err[:60]} |" + " |" * 8)
            continue
        n, e, t = r["nodes"], r["edges"], r.get("twin", {})
        cells = [
            _cell(n.get("exact"), 1e-4), _cell(n.get("atp"), 1e-4),
            _cell(t.get("N atp+qkfix"), 0.1), _cell(t.get("N atp*"), 0.1),
            _cell(e.get("exact"), 1e-4), _cell(e.get("eap"), 1e-4),
            _cell(t.get("E eap-ig"), 0.1), _cell(t.get("E atp*"), 0.1),
        ]  # fmt: skip
        load = (
            "✓" if r["logits_vs_hf_max_diff"] < 1e-4 else f"≠ HF {r['logits_vs_hf_max_diff']:.0e}"
        )
        rows.append(f"| {r['family']} | {load} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--json", default=None, help="write the records here")
    parser.add_argument("--table", default=None, help="only print the table of this JSON file")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    records = []
    for name in args.families:
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                rec = survey(name)
            except Exception as err:
                rec = {"family": name, "crash": one_line(err), "where": _where(err)}
        records.append(rec)
        print(json.dumps(rec, default=str), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1, default=str))
    print(table(records))


if __name__ == "__main__":
    main()
