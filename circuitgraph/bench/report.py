"""The benchmark's table (plain text) and plots (PNG bytes, matplotlib imported lazily)."""

from __future__ import annotations

import io
import re
from typing import Any

from circuitgraph.bench.recall import METHODS
from circuitgraph.bench.speed import TARGETS

__all__ = ["plot_name", "plots", "table"]

_SHORT = {"atp+qkfix": "+qkfix", "atp+graddrop": "+gdrop", "subsampling": "subsamp"}


def _mark(ratio: float, target: float) -> str:
    return f"{ratio:.2f}{'' if ratio <= target else '!'}"


def recall_table(recall: list[dict[str, Any]]) -> list[str]:
    """Speed-up over the exhaustive sweep of each method's cost of verified recall."""
    head = f"{'model':<18}{'task':<13}{'kinds':<8}{'nodes':>6}{'k':>7}{'exh':>6}"
    head += "".join(f"{_SHORT.get(m, m):>8}" for m in METHODS)
    lines = ["Cost of verified recall: speed-up over the exhaustive sweep (exh = its cost, in "
             "forward passes; a backward = 2)", head]  # fmt: skip
    for r in recall:
        for label, k in r["k"].items():
            cells = "".join(f"{r['methods'][m]['speedup'][label]:>8.2f}" for m in METHODS)
            lines.append(
                f"{r['model']:<18}{r['task']:<13}{r['kinds']:<8}{r['nodes']:>6}"
                f"{label + ('' if label.isdigit() else f'={k}'):>7}{r['exhaustive_cost']:>6.0f}{cells}"
            )
    return lines


def speed_table(speed: dict[str, Any], memory: dict[str, Any]) -> list[str]:
    """Speed and memory ratios per model and batch ('!' marks a missed target); ``bridge`` is
    the bare 2f+1b through the bridge over the same passes through the HF module it wraps."""
    t = TARGETS
    lines = [
        "Speed and memory ratios (same run, same batch; '!' = target missed)",
        f"{'model':<26}{'batch':>7}{'AtP':>7}{'AtP*':>7}{'EAP':>7}{'sweep':>7}{'bridge':>8}"
        f"{'memory':>8}",
        f"{'  target':<26}{'':>7}{'<=1.3':>7}{'<=1.3':>7}{'<=1.5':>7}{'<=1.2':>7}{'<=1.3':>8}"
        f"{'<=2':>8}",
    ]
    for key in dict.fromkeys([*speed, *memory]):
        spec = key.split("@", 1)[0]
        mem = _mark(memory[key]["ratio"], t["memory"]) if key in memory else "-"
        if key not in speed:
            batch = "x".join(map(str, memory[key]["batch"]))
            lines.append(f"{spec:<26}{batch:>7}{'-':>7}{'-':>7}{'-':>7}{'-':>7}{'-':>8}{mem:>8}")
            continue
        s, r = speed[key], speed[key]["ratios"]
        bridge = _mark(r["bridge"], t["bridge"]) if "bridge" in r else "-"  # older results
        lines.append(
            f"{spec:<26}{'x'.join(map(str, s['batch'])):>7}{_mark(r['atp'], t['atp']):>7}"
            f"{_mark(r['atp*'], t['atp*']):>7}{_mark(r['eap'], t['eap']):>7}"
            f"{_mark(r['sweep'], t['sweep']):>7}{bridge:>8}{mem:>8}"
        )
    return lines


def scaling_table(s: dict[str, Any]) -> list[str]:
    """AtP* seconds against pairs, length and size, with the linear fit in pairs."""
    fit = s["pairs"]["fit"]
    pairs = ", ".join(
        f"{x}:{y * 1e3:.1f}" for x, y in zip(s["pairs"]["x"], s["pairs"]["seconds"], strict=True)
    )
    seq = ", ".join(
        f"{x}:{y * 1e3:.1f}" for x, y in zip(s["seq"]["x"], s["seq"]["seconds"], strict=True)
    )
    size = ", ".join(
        f"{k} ({v['params'] / 1e6:.1f}M):{v['seconds'] * 1e3:.1f}" for k, v in s["size"].items()
    )
    base = s["base"]
    return [
        f"Scaling of AtP* (ms; {s['model']}, base batch {base['pairs']}x{base['seq']})",
        f"  pairs   {pairs}   linear fit R^2 = {fit['r2']:.3f}, {fit['slope'] * 1e3:.2f} ms/pair",
        f"  length  {seq}",
        f"  size    {size}",
    ]


def peer_table(peer: dict[str, Any]) -> list[str]:
    """Our EAP against TransformerLens's edge attribution patching."""
    lines = [
        "Peer: circuitgraph eap vs TransformerLens attribution_patch(granularity='edge')",
        f"{'model':<26}{'batch':>7}{'edges':>7}{'max rel diff':>14}{'TL ms':>9}{'ours ms':>9}{'speed-up':>10}",
    ]
    for spec, p in peer.items():
        if "unsupported" in p:
            lines.append(f"{spec:<26}  not supported by TransformerLens: {p['unsupported'][:90]}")
            continue
        lines.append(
            f"{spec:<26}{str(p['n_pairs']) + 'x' + str(p['seq']):>7}{p['edges']:>7}"
            f"{p['max_rel_diff']:>14.1e}{p['theirs_s'] * 1e3:>9.1f}{p['ours_s'] * 1e3:>9.1f}"
            f"{p['speedup']:>9.1f}x"
        )
    return lines


def real_table(real: dict[str, Any]) -> list[str]:
    """The ``--real`` part: recall and cost of verified recall, edges, circuit, per task."""
    lines = [
        f"real model {real['model']}: exact top-10 found in AtP / AtP*'s top-10 and top-20; "
        "cost of verified recall at k=10 against the sweep (forward-pass equivalents per pair)",
        "",
        "| task | kind | nodes | AtP top-10 | AtP top-20 | AtP* top-10 | AtP* top-20 | AtP cost "
        "| AtP* cost | sweep |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, r in real["tasks"].items():
        for kind in ("heads", "neurons"):
            if kind not in r:
                continue
            x = r[kind]
            layers = ", ".join(f"m{layer}" for layer in x.get("layers", []))
            where = "head/q/k/v" if kind == "heads" else f"neurons of {layers}"
            lines.append(
                f"| {task} | {where} | {x['nodes']} | {x['atp']['top10']}/10 | "
                f"{x['atp']['top20']}/10 | {x['atp*']['top10']}/10 | {x['atp*']['top20']}/10 | "
                f"{x['atp']['cost']:.0f} | {x['atp*']['cost']:.0f} | {x['atp']['sweep']:.0f} |"
            )
    lines += [
        "",
        "| task | candidate edges | EAP Spearman | EAP top-20 | EAP-IG Spearman | EAP-IG top-20 "
        "| circuit edges | nodes kept | F | target reached | discover s | exact sweep s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, r in real["tasks"].items():
        e, c = r["edges"], r["circuit"]
        sweep = r["exact_heads"]["wall_s"] + r.get("neurons", {}).get("exact", {}).get("wall_s", 0)
        reached = (
            ""
            if c.get("target") is None
            else f"{'yes' if c['reached'] else 'no'} (F >= {c['target']:g})"
        )
        lines.append(
            f"| {task} | {e['edges']} | {e['eap']['spearman']:.3f} | {e['eap']['top20']}/20 | "
            f"{e['eap-ig']['spearman']:.3f} | {e['eap-ig']['top20']}/20 | {c['edges']} | "
            f"{c.get('keep_nodes', '')} | {c['faithfulness']:.3f} | {reached} | "
            f"{c['wall_s']:.0f} | {sweep:.0f} |"
        )
    return lines


def table(results: dict[str, Any]) -> str:
    """The whole printed table.

    Example:
        >>> print(table(run_bench(BenchConfig.quick())))  # doctest: +SKIP
    """
    m = results["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    blocks = [
        [f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch thread(s), "
         f"torch {m['torch']}, python {m['python']}{gpu}"],
    ]  # fmt: skip
    if "recall" in results:
        blocks.append(recall_table(results["recall"]))
    if "speed" in results or "memory" in results:
        blocks.append(speed_table(results.get("speed", {}), results.get("memory", {})))
    if "scaling" in results:
        blocks.append(scaling_table(results["scaling"]))
    if "peer" in results:
        blocks.append(peer_table(results["peer"]))
    if "real" in results:
        blocks.append(real_table(results["real"]))
    blocks.append([f"total {results['seconds']['total']:.0f} s"])
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def plot_name(setting: dict[str, Any]) -> str:
    """File name of one setting's recall plot.

    Example:
        >>> plot_name({"model": "zoo:gpt2-4l", "task": "ioi", "kinds": "heads"})
        'recall-gpt2-4l-ioi-heads.png'
    """
    model = re.sub(r"[^A-Za-z0-9.-]+", "-", setting["model"].split(":", 1)[-1])
    return f"recall-{model}-{setting['task']}-{setting['kinds']}.png"


def plots(results: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name: one recall-vs-cost plot per setting and one scaling plot.

    Raises ImportError when matplotlib is missing (the caller skips the plots).

    Example:
        >>> sorted(plots(results))  # doctest: +SKIP
        ['recall-attn-only-2l-induction-heads.png', 'scaling.png']
    """
    import matplotlib

    matplotlib.use("Agg")
    out = {plot_name(r): _recall_plot(r) for r in results.get("recall", [])}
    if "scaling" in results:
        out["scaling.png"] = _scaling_plot(results["scaling"])
    return out


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _recall_plot(r: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METHODS:
        c = r["methods"][m]["curve"]
        ax.step(c["cost"], c["recall"], where="post", label=m)
    ax.axvline(r["exhaustive_cost"], color="grey", ls=":", label="exhaustive")
    ax.set_xlabel("cost (forward passes per pair; backward = 2)")
    ax.set_ylabel(f"recall of the true top-{r['curve_k']}")
    ax.set_title(f"{r['model']} · {r['task']} · {r['kinds']} ({r['nodes']} nodes)")
    ax.legend(fontsize=7)
    return _png(fig)


def _scaling_plot(s: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].plot(s["pairs"]["x"], s["pairs"]["seconds"], "o-")
    axes[0].set_xlabel("prompt pairs")
    axes[1].plot(s["seq"]["x"], s["seq"]["seconds"], "o-")
    axes[1].set_xlabel("sequence length")
    sizes = list(s["size"].values())
    axes[2].loglog([v["params"] for v in sizes], [v["seconds"] for v in sizes], "o-")
    axes[2].set_xlabel("parameters")
    for ax in axes:
        ax.set_ylabel("AtP* seconds")
    fig.suptitle(f"AtP* time ({s['model']}; base batch {s['base']['pairs']}x{s['base']['seq']})")
    return _png(fig)
