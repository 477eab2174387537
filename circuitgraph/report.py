"""The human-readable report of a discovered circuit (``report.md``)."""

from __future__ import annotations

from typing import Any

__all__ = ["report_md"]


def report_md(found: Any, model: str | None = None, source: str | None = None) -> str:
    """The Markdown report of a :class:`~circuitgraph.pipeline.Discovery`.

    ``model`` and ``source`` (the task or data file) default to what the circuit records.

    Example:
        >>> print(report_md(found))  # doctest: +SKIP
    """
    g = found.circuit.graph
    c = g["config"]
    model = model or str(g.get("model") or "the model")
    source = source or str(g.get("task") or g.get("data") or "the prompt pairs")
    lines = [
        f"# Circuit for `{source}` on `{model}`",
        "",
        f"- metric: `{c['metric']}` over {g['n_pairs']} prompt pairs (noising: corrupt values "
        "patched into the clean run)",
        f"- circuit: **{g['n_nodes']} nodes, {g['n_edges']} edges** "
        f"({c['edge_method']} edge scores among the top {c['keep_nodes']} nodes by "
        f"{c['node_method']})",
        f"- faithfulness F = (L_C − L_corrupt)/(L_clean − L_corrupt) = **{g['faithfulness']:.3f}** "
        f"(L_clean {g['metric_clean']:.3f}, L_corrupt {g['metric_corrupt']:.3f}, "
        f"L_circuit {g['metric_circuit']:.3f})",
    ]
    d = found.diagnosis
    if d is not None:
        lines.append(
            f"- false-negative bound: with {d.confidence:.0%} confidence no unverified node has "
            f"|effect| above **{d.bound:.4g}** ({d.n_subsets} random subsets, p = {d.p}). "
            f"{d.caveat}"
        )
    lines += ["", "## Top nodes", ""]
    lines += _node_table(found)
    lines += ["", "## Circuit edges", "", "| edge | estimate | exact |", "|---|---:|---:|"]
    for u, v, a in sorted(found.circuit.edges(data=True), key=lambda x: -x[2].get("score", 0)):
        if a.get("internal"):
            continue
        exact = a.get("exact")
        lines.append(
            f"| `{u}->{v}` | {a['signed']:+.4g} | {'' if exact is None else f'{exact:+.4g}'} |"
        )
    lines += [
        "",
        "## Faithfulness by circuit size (top-n edges)",
        "",
        "| edges | F |",
        "|---:|---:|",
    ]
    lines += [f"| {n} | {f:.3f} |" for n, f in found.curve]
    lines += ["", "## Timings (seconds)", ""]
    lines += [f"- {stage}: {secs:.1f}" for stage, secs in found.timings.items()]
    return "\n".join(lines) + "\n"


def _node_table(found: Any) -> list[str]:
    s = found.node_scores
    exact = {r["node"]: r["true"] for r in found.verification.rows()} if found.verification else {}
    rows = [f"| rank | node | {s.method} (signed) | exact |", "|---:|---|---:|---:|"]
    for i, n in enumerate(s.top_k(15), 1):
        x = exact.get(n.id)
        rows.append(f"| {i} | `{n.id}` | {s[n][0]:+.4g} | {'' if x is None else f'{x:+.4g}'} |")
    return rows
