"""The human-readable report of a discovered circuit (``report.md``) and its faithfulness
picture (``faithfulness.png``)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from circuitgraph.faithfulness import gap_warning
from circuitgraph.text import plural

__all__ = ["faithfulness_png", "report_md"]


def report_md(
    found: Any, model: str | None = None, source: str | None = None, picture: str | None = None
) -> str:
    """The Markdown report of a :class:`~circuitgraph.pipeline.Discovery`.

    ``model`` and ``source`` (the task or data file) default to what the circuit records;
    ``picture`` is the file name of the faithfulness picture to embed (none by default).

    Example:
        >>> print(report_md(found, picture="faithfulness.png"))  # doctest: +SKIP
    """
    g = found.circuit.graph
    c = g["config"]
    model = model or str(g.get("model") or "the model")
    source = source or str(g.get("task") or g.get("data") or "the prompt pairs")
    lines = [
        f"# Circuit for `{source}` on `{model}`",
        "",
        f"- metric: `{c['metric']}` over {plural(g['n_pairs'], 'prompt pair')} (noising: "
        "corrupt values patched into the clean run)",
        f"- circuit: **{plural(g['n_nodes'], 'node')}, {plural(g['n_edges'], 'edge')}** "
        f"({c['edge_method']} edge scores among the top "
        f"{plural(g.get('keep_nodes', c['keep_nodes']), 'node')} by {c['node_method']})",
        f"- faithfulness F = (L_C − L_corrupt)/(L_clean − L_corrupt) = **{g['faithfulness']:.3f}** "
        f"(L_clean {g['metric_clean']:.3f}, L_corrupt {g['metric_corrupt']:.3f}, "
        f"L_circuit {g['metric_circuit']:.3f})",
    ]
    lines.append(f"- selection: {_selection_line(g)}")
    warning = gap_warning(g["metric_clean"], g["metric_corrupt"])
    if warning:
        lines.append(f"- **{warning}**")
    if g.get("estimate_warning"):
        lines.append(f"- **{g['estimate_warning']}**")
    if found.mib is not None:
        lines.append(_mib_line(found.mib))
    if picture:
        lines += ["", f"![Faithfulness by circuit size]({picture})"]
    lines += _trust_section(found)
    lines += ["", f"## Top nodes (ranked by {found.node_scores.method} score)", ""]
    lines += _node_table(found)
    lines += _verified_table(found)
    lines += [
        "",
        "## Circuit edges (by |score|, largest first)",
        "",
        "| edge | estimate | exact |",
        "|---|---:|---:|",
    ]
    for u, v, a in sorted(found.circuit.edges(data=True), key=lambda x: -x[2].get("score", 0)):
        if a.get("internal"):
            continue
        exact = a.get("exact")
        mark = " (path completion)" if a.get("completion") else ""
        lines.append(
            f"| `{u}->{v}`{mark} | {a['signed']:+.4g} | "
            f"{'' if exact is None else f'{exact:+.4g}'} |"
        )
    if g.get("search"):
        lines += _search_table(g["search"])
    lines += ["", "## Faithfulness by circuit size (top-n edges by |score|)", ""]
    lines += _curve_table(found)
    lines += ["", "## Timings (seconds)", ""]
    lines += [f"- {stage}: {secs:.1f}" for stage, secs in found.timings.items()]
    return "\n".join(lines) + "\n"


def _selection_line(g: Mapping[str, Any]) -> str:
    """How the circuit's edges were chosen, in one line (the search's own summary)."""
    sel = g.get("selection") or {}
    rule, value = sel.get("rule"), sel.get("value")
    added = sel.get("completion")
    done = f"; {plural(added, 'edge')} added to complete paths" if added else ""
    if rule == "target":
        tries = [
            f"{x['keep_nodes']} nodes F = {_f3(x['faithfulness'] or 0.0)}"
            for x in g.get("node_growth") or []
        ]
        tried = (
            f" The kept nodes were doubled while all their edges missed the target: "
            f"{', '.join(tries)}."
            if tries
            else ""
        )
        ranked = g.get("ranked_by", "signed")
        return f"{g['search']['summary']} Ranked by {ranked} score{done}.{tried}"
    what = {"top_n": f"the top {value} edges by |score|",
            "threshold": f"every edge with |score| >= {value}",
            "greedy": f"{value} edges grown greedily from the logits"}.get(str(rule), str(rule))  # fmt: skip
    return f"{what}, kept where on an input -> logits path{done}"


def _search_table(search: Mapping[str, Any]) -> list[str]:
    """Every circuit the target search evaluated: the F-versus-size curve it saw."""
    lines = [
        "",
        f"## The target search (faithfulness >= {search['target']:g}, at most "
        f"{search['max_edges']} edges)",
        "",
        "| ranked edges | circuit edges | F |",
        "|---:|---:|---:|",
    ]
    for k, n, f in sorted(search["evaluations"]):
        chosen = " **(chosen)**" if k == search["prefix"] else ""
        lines.append(f"| {k} | {n} | {f:.3f}{chosen} |")
    return lines


def _trust_section(found: Any) -> list[str]:
    """What was verified exactly, the bound on the rest in the gap's units and what it means,
    and the passes spent against the sweep and the budget."""
    g, v, d = found.circuit.graph, found.verification, found.diagnosis
    cost = getattr(found, "cost", None)
    n_edges = sum(1 for *_, a in found.circuit.edges(data=True) if a.get("verified"))
    lines = ["", "## How far to trust it", ""]
    rule = (g.get("verification") or {}).get("rule", "")
    if v is None:
        lines.append("- verified exactly: no node (`--verify 0`)")
    else:
        how = f"`--verify {rule.replace('top ', '')}`" if rule else ""
        lines.append(
            f"- verified exactly ({how}{', ' + v.asked if v.asked else ''}): "
            f"**{plural(len(v.nodes), 'node')}** (table below; `verified: true` and `exact` "
            "in circuit.json) and "
            f"**{plural(n_edges, 'circuit edge')}** of {g['n_edges']} (the largest by |score|; "
            "column *exact* under Circuit edges)"
        )
        if v.threshold is not None:
            outcome = {
                "bounded": "it held",
                "exhausted": "every screened node ended up verified",
            }.get(v.stopped, f"it was not reached (stopped: {v.stopped})")
            lines.append(
                f"- stopping rule: verify until no unverified node can reach τ = "
                f"{v.threshold:.4g} ({_tau(v.asked)}); {outcome}"
            )
    if d is None:
        if v is not None and v.stopped == "exhausted":
            lines.append("- false-negative bound: none needed, every screened node was verified")
        else:
            lines.append("- false-negative bound: not computed")
    else:
        rel = d.relative_bound
        unit = f" = **{rel:.3g} × the clean − corrupt gap** ({abs(d.gap or 0):.4g})" if rel else ""
        lines.append(f"- false-negative bound: **{d.bound:.4g}**{unit}. {d.summary()}")
    if cost is not None:
        lines.append(f"- cost: {cost.summary()}")
    if d is None:
        from circuitgraph.attribution.diagnostics import CAVEAT

        lines.append(f"- {CAVEAT}")
    return lines


def _tau(asked: str) -> str:
    """What τ is, from the rule's description (``top 10``, ``|effect| >= 0.5``)."""
    if asked.startswith("top "):
        return f"the {asked[4:]}th largest exact effect verified"
    return "the --min-effect given" if asked else "the threshold asked for"


def _verified_table(found: Any) -> list[str]:
    """Every verified node, largest exact effect first, with its rank in the screen."""
    v = found.verification
    if v is None or not len(v.nodes):
        return []
    rows = sorted(v.rows(), key=lambda r: -abs(r["true"]))
    out = ["", f"## Verified nodes ({len(rows)}, by |exact effect|)", "",
           f"| node | {v.method} rank | signed estimate | exact effect |", "|---|---:|---:|---:|"]  # fmt: skip
    for r in rows[:_MAX_VERIFIED_ROWS]:
        out.append(f"| `{r['node']}` | {r['rank']} | {r['estimated']:+.4g} | {r['true']:+.4g} |")
    if len(rows) > _MAX_VERIFIED_ROWS:
        out.append(f"\n({len(rows) - _MAX_VERIFIED_ROWS} more in circuit.json)")
    return out


#: verified nodes listed in the report (all of them are in the JSON)
_MAX_VERIFIED_ROWS = 30


def _mib_line(m: Any) -> str:
    return (
        f"- MIB scores over {plural(len(m.fractions), 'fraction')} of the model's "
        f"{plural(m.n_edges, 'edge')} ({m.n_scored} scored, the rest at score 0): "
        f"**CPR {m.cpr:.3f}** (area under F, edges ranked by signed contribution; higher is "
        f"better), **CMD {m.cmd:.3f}** (area between F and 1, ranked by |score|; lower is "
        "better)"
    )


def _node_table(found: Any) -> list[str]:
    """The top nodes in ranking order: the score that ranks them next to the signed estimate
    (for GradDrop the two differ, so the order is visible) and the exact effect."""
    s = found.node_scores
    exact = {r["node"]: r["true"] for r in found.verification.rows()} if found.verification else {}
    rows = [
        f"| rank | node | {s.method} score (ranks) | signed estimate | exact effect |",
        "|---:|---|---:|---:|---:|",
    ]
    for i, n in enumerate(s.top_k(15), 1):
        signed, score = s[n]
        x = exact.get(n.id)
        rows.append(
            f"| {i} | `{n.id}` | {score:.4g} | {signed:+.4g} | {'' if x is None else f'{x:+.4g}'} |"
        )
    return rows


def _curve_table(found: Any) -> list[str]:
    m = found.mib
    n_edges = m.n_edges if m is not None else None
    signed = dict(zip(m.sizes, m.cpr_curve, strict=True)) if m is not None else {}
    head = "| edges | share of the model's edges | F (by \\|score\\|) | F (by contribution) |"
    rows = [head, "|---:|---:|---:|---:|"] if m is not None else ["| edges | F |", "|---:|---:|"]
    for n, f in found.curve:
        if m is None:
            rows.append(f"| {n} | {_f3(f)} |")
            continue
        share = f"{100 * n / n_edges:.3g}%" if n_edges else ""
        by_signed = _f3(signed[n]) if n in signed else ""
        rows.append(f"| {n} | {share} | {_f3(f)} | {by_signed} |")
    return rows


def _f3(x: float) -> str:
    """Three decimals, without the "-0.000" of a tiny negative rounding error."""
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def faithfulness_png(
    curve: Sequence[Sequence[float]],
    *,
    mib: Mapping[str, Any] | None = None,
    circuit_size: int | None = None,
    search: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> bytes:
    """The faithfulness curve as a PNG (matplotlib, no global pyplot state).

    ``curve`` holds (edges, F) points of the ranking by |score|; ``mib`` (``MIBScores.to_json()``)
    adds the curve of the ranking by signed contribution and CPR/CMD; ``circuit_size`` marks
    the circuit; ``search`` (the circuit's ``search`` attribute) adds the circuits the target
    search evaluated, its target and the one it chose. Sizes run on a log axis, so the empty
    circuit (F = 0) is left out.

    Example:
        >>> faithfulness_png([(1, 0.2), (10, 0.7), (100, 1.0)], circuit_size=10)[:4]
        b'\\x89PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = sorted((int(n), float(f)) for n, f in curve if n > 0 and math.isfinite(f))
    if pts:
        ax.plot(*zip(*pts, strict=True), "o-", color="#1f5fbf", lw=2, ms=5,
                label="top edges by |score|" + (" (CMD)" if mib else ""))  # fmt: skip
    if mib:
        signed = [(n, f) for n, f in zip(mib["sizes"], mib["cpr_curve"], strict=True) if n > 0]
        if signed:
            ax.plot(*zip(*signed, strict=True), "s--", color="#d07020", lw=1.5, ms=4,
                    label="top edges by signed contribution (CPR)")  # fmt: skip
    if search:
        _search_points(ax, search)
    for y in (0.0, 1.0):
        ax.axhline(y, color="#888888", lw=0.8, ls=":")
    if circuit_size:
        ax.axvline(circuit_size, color="#d03030", lw=1.2, ls="--",
                   label=f"this circuit: the top {plural(circuit_size, 'edge')}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("edges in the circuit (top n of the ranking, log scale)")
    ax.set_ylabel("faithfulness F")
    heading = title or "Faithfulness by circuit size"
    if mib:
        heading += f"   CPR {mib['cpr']:.3f} · CMD {mib['cmd']:.3f}"
    ax.set_title(heading, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _search_points(ax: Any, search: Mapping[str, Any]) -> None:
    """The target search's evaluations (completed prefixes of its ranking), the target line
    and the chosen circuit."""
    pts = sorted(
        (int(n), float(f)) for _, n, f in search["evaluations"] if n > 0 and math.isfinite(f)
    )
    if pts:
        ax.plot(*zip(*pts, strict=True), "^:", color="#2a9d4a", lw=1, ms=5,
                label="circuits the target search evaluated")  # fmt: skip
    ax.axhline(search["target"], color="#2a9d4a", lw=0.8, ls="--")
    if search.get("n_edges") and search.get("faithfulness") is not None:
        ax.plot([search["n_edges"]], [search["faithfulness"]], "*", color="#d03030", ms=14,
                label=f"this circuit: {plural(int(search['n_edges']), 'edge')}")  # fmt: skip
