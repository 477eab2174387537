"""The conformance matrix: every decoder family × every capability, against the independent
reference (``tests/reference.py``), written as ``docs/architectures.md``.

    python -m benchmarks.conformance --out docs/architectures.md [FAMILY ...]

For each tiny random model of ``tests/families.py`` (loaded from disk through
``cg.load_model``, like a user's model) it runs the comparisons of ``tests/conformance.py``
— the same functions ``tests/test_families.py`` asserts — on every node and every edge
(the default test run samples edges of every kind; ``pytest -m slow`` compares them all).
A cell is ✓ where the comparison is within its tolerance, the refusal sentence where
circuitgraph refuses, and ✗ with the error otherwise. About two minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from circuitgraph.errors import CircuitGraphError  # noqa: E402
from tests.conformance import CAPABILITIES, TOL, check, load  # noqa: E402
from tests.families import FAMILIES  # noqa: E402

COLUMNS = {
    "nodes exact": "nodes: exact", "nodes AtP": "nodes: AtP", "QK fix": "nodes: QK fix",
    "nodes AtP*": "nodes: AtP*", "edges exact": "edges: exact", "EAP": "edges: EAP",
    "EAP-IG": "edges: EAP-IG", "edges AtP*": "edges: AtP*", "discover": "discover",
}  # fmt: skip


def run_family(name: str) -> dict[str, Any]:
    """{capability: relative error | refusal sentence | failure} for one family."""
    row: dict[str, Any] = {"family": name, "exercises": FAMILIES[name].exercises}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        try:
            fam = load(name, folder)
        except CircuitGraphError as err:
            row["refused"] = str(err).replace(repr(folder), "DIR")
            return row
        row["notes"] = ["neuron nodes: refused"] if fam.info.moe else []
        for cap in CAPABILITIES:
            try:
                row[cap] = check(fam, cap, every=True)
            except CircuitGraphError as err:
                row[cap] = f"refused: {err}"
            except Exception as err:  # a crash is a red cell, said in one line
                text = str(err).strip().splitlines()
                row[cap] = f"✗ {type(err).__name__}: {text[0] if text else ''}"
    row["seconds"] = time.perf_counter() - start
    return row


def cell(cap: str, value: Any) -> str:
    if isinstance(value, float):
        return "✓" if value <= TOL[cap] else f"✗ {value:.1e}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    from importlib.metadata import version

    refusals: list[str] = []
    out = [
        "# Architectures: what circuitgraph computes correctly, family by family",
        "",
        "Written by `python -m benchmarks.conformance --out docs/architectures.md` "
        f"(transformers {version('transformers')}, transformer-lens "
        f"{version('transformer-lens')}, torch {torch.__version__.split('+')[0]}). "
        "Each row is a tiny random model of the family (two layers, width 64, every weight, "
        "bias and norm scale drawn at random so that nothing hides behind an identity), "
        "saved with `save_pretrained` and loaded by `circuitgraph.load_model` like a user's "
        "model directory. Each ✓ is a comparison with an independent reference written with "
        "plain PyTorch hooks on the Hugging Face modules (`tests/reference.py`: not the "
        "TransformerLens bridge, not circuitgraph's patching code), on every node and every "
        "edge of the model; the same comparisons are tests (`tests/test_families.py`).",
        "",
        "| column | compared with the reference | tolerance |",
        "|---|---|---|",
        "| nodes: exact | exact patching of every head, q, k, v, MLP and two neurons per layer "
        f"(and q/k at single positions) | {TOL['nodes exact']:.0e} |",
        "| nodes: AtP | the reference's derivative at a vanishing patch (autograd through the "
        f"HF model) | {TOL['nodes AtP']:.0e} |",
        "| nodes: QK fix | exact patching of every q and k node, the metric linearised in that "
        f"layer's head outputs, at the full corrupt perturbation | {TOL['QK fix']:.0e} |",
        "| nodes: AtP* | signed value vs the QK-fix column's truth (q, k) and the derivative "
        "(others); GradDrop score vs the same with each layer's attention and MLP writes "
        f"detached in the reference | {TOL['nodes AtP*']:.0e} |",
        "| edges: exact | exact edge patching of every edge (parallel blocks: no head → MLP "
        "edge inside a layer; post-norms: a head's write through its post-norm) | "
        f"{TOL['edges exact']:.0e} |",
        f"| edges: EAP | the derivative of every edge's patch | {TOL['EAP']:.0e} |",
        "| edges: EAP-IG | that derivative averaged over the same interpolated inputs (3 steps) "
        f"| {TOL['EAP-IG']:.0e} |",
        "| edges: AtP* | as nodes: AtP* (edges into q/k: exact edge patching linearised in z), "
        f"for every edge | {TOL['edges AtP*']:.0e} |",
        "| discover | the whole pipeline runs to a circuit (its parts are the columns before) "
        "| — |",
        "",
        "Tolerances are relative to the largest true effect; the errors measured are listed "
        "below the matrix. On a model of your own, `circuitgraph check --model DIR` runs the "
        "same kind of comparisons in seconds to a minute.",
        "",
        "| family | " + " | ".join(COLUMNS.values()) + " | exercises |",
        "|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    for row in rows:
        if "refused" in row:
            refusals.append(row["refused"])
            mark = f"refused ({len(refusals)})"
            cells = [mark] * len(COLUMNS)
        else:
            cells = []
            for cap in COLUMNS:
                text = cell(cap, row[cap])
                if text.startswith("refused"):
                    refusals.append(text.removeprefix("refused: "))
                    text = f"refused ({len(refusals)})"
                cells.append(text)
        note = "; ".join(row.get("notes", []))
        desc = row["exercises"] + (f" — {note}" if note else "")
        out.append(f"| {row['family']} | " + " | ".join(cells) + f" | {desc} |")
    if refusals:
        out += ["", "Refusals (what circuitgraph says, in one sentence):", ""]
        out += [f"{i}. {text}" for i, text in enumerate(refusals, 1)]
    out += [
        "",
        "Also refused, each in one sentence with a test (`tests/test_families.py`): neuron "
        "nodes of a mixture of experts; the QK fix (and edge AtP*) on a model whose attention "
        "is not softmax(scale·q·k + a fixed bias) averaging v, checked on every batch — AtP and "
        "EAP still run; a node whose hook no gradient reaches (never read as a silent zero); "
        "candidate edges a parallel block does not have.",
        "",
        "**Exact agreement is not agreement with the full patch.** These random models are "
        "strongly non-linear along a full clean → corrupt patch, Gemma-2/3 most visibly: AtP "
        "equals the model's true derivative (finite differences of the reference's own "
        "patching agree to 1e-3) while full patches differ from it by more than half the "
        "largest effect, some with the opposite sign (`test_low_agreement_is_the_models_"
        "non_linearity_and_is_warned_about`). `circuitgraph check` warns about it, and "
        "`discover` says so in its summary and report when the verified top nodes are far from "
        "their estimates.",
    ]
    out += ["", "## Measured errors (relative to the largest true effect)", "",
            "| family | " + " | ".join(c for c in COLUMNS if c != "discover") + " | seconds |",
            "|---|" + "---|" * (len(COLUMNS) - 1) + "---|"]  # fmt: skip
    for row in rows:
        if "refused" in row:
            continue
        errs = [f"{row[c]:.1e}" if isinstance(row[c], float) else "—" for c in COLUMNS
                if c != "discover"]  # fmt: skip
        out.append(f"| {row['family']} | " + " | ".join(errs) + f" | {row['seconds']:.0f} |")
    return ("\n".join(out) + "\n").replace("e-0", "e-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="default: every family")
    parser.add_argument("--out", type=Path, help="write the Markdown matrix here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    names = args.families or list(FAMILIES)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")
    rows = []
    for name in names:
        row = run_family(name)
        rows.append(row)
        print(name, {k: (f"{v:.1e}" if isinstance(v, float) else v) for k, v in row.items()
                     if k not in ("family", "exercises")}, file=sys.stderr, flush=True)  # fmt: skip
    text = markdown(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
