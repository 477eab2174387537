"""The table of bad inputs and faults the command line must survive, and the README's
table of errors generated from it.

Each :class:`Fault` is one command line (built in a fresh temporary folder), an optional
injected fault (a full disk, a refused permission, an internal error, a signal at a given
point), the exit status it must give and the message, abridged with "…", that must be its
one line on stderr. ``tests/cli/test_faults.py`` runs every row; the README's table is
``python -m tests.cli.faults`` and a test checks that the README holds exactly that.

The injections (:func:`inject`) patch the process itself, so the same names work in
``CliRunner`` and, through ``tests/cli/fault_driver.py``, in a subprocess.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "zoo:attn-only-2l"
#: the smallest honest runs: 2 pairs, a tiny circuit, no bound
QUICK = ["--model", MODEL, "--n-pairs", "2", "--batch-size", "2"]
DISCOVER = [*QUICK, "--verify-k", "1", "--keep-nodes", "4", "--diagnose-subsets", "0"]


class Case:
    """One row's temporary folder and the files it is built from."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.out = tmp / "out" / "run"  # two folders the run must create, and remove on failure

    @property
    def words(self) -> list[str]:
        """Single-token words of the zoo model's word-level tokenizer."""
        from circuitgraph import zoo

        vocab = json.loads((zoo.model_path("attn-only-2l") / "tokenizer.json").read_text())
        return [w for w in vocab["model"]["vocab"] if w.isalpha() and w.islower()][:40]

    def text(self, name: str, content: str) -> Path:
        path = self.tmp / name
        path.write_text(content)
        return path

    def pairs(self, rows: list[dict[str, Any]], name: str = "pairs.jsonl") -> Path:
        return self.text(name, "".join(json.dumps(r) + "\n" for r in rows))

    def pair(self, **change: str) -> dict[str, str]:
        w = self.words
        row = {
            "clean": f"{w[0]} {w[1]} {w[2]} {w[0]}",
            "corrupt": f"{w[3]} {w[1]} {w[2]} {w[0]}",
            "answer": w[1],
            "wrong": w[4],
        }
        return {**row, **change}

    def model(self, name: str, edit: Callable[[Path], None]) -> Path:
        """A copy of the zoo model with ``edit`` applied to its folder."""
        from circuitgraph import zoo

        path = self.tmp / name
        shutil.copytree(zoo.model_path("attn-only-2l"), path)
        edit(path)
        return path

    def circuit(self, name: str = "circuit.json") -> Path:
        from circuitgraph.export import write
        from circuitgraph.graph import circuit_from_edges

        return write(circuit_from_edges(["input->a0.h0<q>", "a0.h0->logits"]), self.tmp / name)


def _truncate(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _garbage(path: Path) -> None:
    (path / "model.safetensors").write_bytes(os.urandom(4096))


def _no_tokenizer(path: Path) -> None:
    for p in path.glob("tokenizer*"):
        p.unlink()


def _bad_config(path: Path) -> None:
    (path / "tl_native_config.json").write_text('{"n_layers": 2,,}')


def _nan_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    name = "head.weight"  # the unembedding: every logit NaN
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, path / "model.safetensors")


@dataclass(frozen=True)
class Fault:
    """One bad input or fault: the command line, what goes wrong, what must come out."""

    name: str
    what: str  # the README's "input or fault" column
    message: str  # the one line on stderr, "…" where it names paths or numbers
    args: Callable[[Case], list[str]]
    code: int = 1
    inject: str | None = None  # a fault patched into the process (see inject)
    shell: bool = False  # also run through the console script in a subprocess
    signal: str | None = None  # "INT" or "TERM": sent at `inject`'s pause point (subprocess)
    kept: tuple[str, ...] = ()  # files finished before the fault, which must stay
    needs_cpu_only: bool = False  # meaningful only where torch sees no GPU
    tags: tuple[str, ...] = field(default=())

    def fragments(self) -> list[str]:
        return [f.strip() for f in self.message.split("…") if f.strip()]


F = Fault
FAULTS: tuple[Fault, ...] = (
    # ---- model files ---------------------------------------------------------------
    F("model-missing", "model directory that does not exist",
      "model directory '…' does not exist; check the path",
      lambda c: ["nodes", "--model", str(c.tmp / "nope" / "m"), "--out", str(c.out)], shell=True),
    F("model-no-config", "model directory without a config",
      "expected a Hugging Face model directory with a config.json (or a folder with one .gguf "
      "file) but … has neither",
      lambda c: ["nodes", "--model", str(c.tmp), "--out", str(c.out)]),
    F("model-truncated", "truncated `model.safetensors`",
      "could not read the weights of … (Error while deserializing header: …); the file is "
      "truncated or corrupt, so save or download the model again",
      lambda c: ["nodes", *QUICK, "--model", str(c.model("m", _truncate)), "--out", str(c.out)],
      shell=True),
    F("model-garbage", "weights file of random bytes",
      "could not read the weights of …; the file is truncated or corrupt",
      lambda c: ["nodes", *QUICK, "--model", str(c.model("m", _garbage)), "--out", str(c.out)]),
    F("model-no-tokenizer", "model directory without a tokenizer",
      "expected a tokenizer with the model … but found none (no tokenizer.json or vocabulary "
      "files next to its config); save one there with tokenizer.save_pretrained(DIR)",
      lambda c: ["discover", *DISCOVER, "--model", str(c.model("m", _no_tokenizer)),
                 "--out", str(c.out)]),
    F("model-bad-config", "model config that is not JSON",
      "could not load the model directory …: Expecting property name",
      lambda c: ["nodes", *QUICK, "--model", str(c.model("m", _bad_config)), "--out", str(c.out)]),
    F("model-hub-offline", "hub name with no network or cache",
      "could not load 'circuitgraph-test/not-cached' from the Hugging Face hub or the local "
      "cache (no network access?); use a zoo model",
      lambda c: ["nodes", "--model", "circuitgraph-test/not-cached", "--out", str(c.out)],
      inject="hub-offline"),
    F("model-nan", "weights that make the logits NaN",
      "expected finite values from the metric but … are NaN or infinite; check the model's "
      "dtype (try --dtype float32)",
      lambda c: ["discover", *DISCOVER, "--model", str(c.model("m", _nan_weights)),
                 "--out", str(c.out)]),
    F("dtype-unknown", "unknown `--dtype`",
      "expected a dtype among … but got 'float8'",
      lambda c: ["nodes", *QUICK, "--dtype", "float8", "--out", str(c.out)]),
    F("device-unknown", "unknown `--device`",
      "expected a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps' but got 'bogus'",
      lambda c: ["nodes", *QUICK, "--device", "bogus", "--out", str(c.out)], shell=True),
    F("device-no-gpu", "`--device cuda` without a GPU",
      "device 'cuda' asks for a GPU but torch sees no CUDA device here",
      lambda c: ["discover", *DISCOVER, "--device", "cuda", "--out", str(c.out)],
      needs_cpu_only=True),
    F("bench-no-gpu", "`bench --device cuda` without a GPU",
      "device 'cuda' asks for a GPU but torch sees no CUDA device here",
      lambda c: ["bench", "--quick", "--device", "cuda", "--out", str(c.out)],
      needs_cpu_only=True),
    # ---- data ------------------------------------------------------------------------
    F("data-missing", "data file that does not exist",
      "data file '…' does not exist; check the path",
      lambda c: ["nodes", *QUICK, "--data", str(c.tmp / "none.jsonl"), "--out", str(c.out)]),
    F("data-suffix", "data file that is neither JSONL nor CSV",
      "expected a data file ending in one of ['.csv', '.json', '.jsonl', '.ndjson'] but got",
      lambda c: ["nodes", *QUICK, "--data", str(c.text("p.txt", "x")), "--out", str(c.out)]),
    F("data-empty", "empty data file",
      "expected at least one prompt pair but the file has none; add records with the fields",
      lambda c: ["nodes", *QUICK, "--data", str(c.text("p.jsonl", "\n")), "--out", str(c.out)]),
    F("data-bad-json", "malformed JSONL line",
      "line 2: expected a JSON object but the line is malformed (Expecting property name enclosed "
      "in double quotes at column 2); fix the JSON on that line",
      lambda c: ["nodes", *QUICK, "--data",
                 str(c.text("p.jsonl", json.dumps(c.pair()) + "\n{oops}\n")), "--out", str(c.out)],
      shell=True),
    F("data-missing-field", "record without a field",
      "line 1: expected the field 'wrong' but it is missing; every record needs",
      lambda c: ["nodes", *QUICK, "--data",
                 str(c.pairs([{k: v for k, v in c.pair().items() if k != "wrong"}])),
                 "--out", str(c.out)]),
    F("data-wrong-type", "field that is not a string",
      "line 1: expected the field 'clean' to be a string but got int 5; quote it",
      lambda c: ["nodes", *QUICK, "--data", str(c.pairs([{**c.pair(), "clean": 5}])),
                 "--out", str(c.out)]),
    F("data-not-object", "JSONL line that is not an object",
      "line 1: expected an object with fields ['clean', 'corrupt', 'answer', 'wrong'] but got list",
      lambda c: ["nodes", *QUICK, "--data", str(c.text("p.jsonl", "[1, 2]\n")), "--out", str(c.out)]),
    F("data-csv-header", "CSV without a column",
      "line 1: expected a header with the columns ['clean', 'corrupt', 'answer', 'wrong'] but "
      "['wrong'] are missing",
      lambda c: ["nodes", *QUICK, "--data", str(c.text("p.csv", "clean,corrupt,answer\na,b,c\n")),
                 "--out", str(c.out)]),
    F("data-answer-is-wrong", "answer equal to the wrong answer",
      "expected the answer and the wrong answer to differ but they are the same token in 1 of 2 "
      "pairs (pair 2); the logit difference is 0 there",
      lambda c: ["discover", *DISCOVER, "--data",
                 str(c.pairs([c.pair(), c.pair(wrong=c.pair()["answer"])])), "--out", str(c.out)]),
    F("data-identical", "clean equal to corrupt in every pair",
      "expected clean and corrupt prompts that differ but all 2 pairs are identical; every "
      "effect would be 0",
      lambda c: ["discover", *DISCOVER, "--data",
                 str(c.pairs([c.pair(corrupt=c.pair()["clean"])] * 2)), "--out", str(c.out)]),
    F("data-unknown-word", "answer not in the vocabulary",
      "line 1: the answer 'zzqx' is not in the tokenizer's vocabulary",
      lambda c: ["nodes", *QUICK, "--data", str(c.pairs([c.pair(answer="zzqx")])),
                 "--out", str(c.out)]),
    F("data-multi-token", "answer of several tokens",
      "line 1: expected the answer '…' to be a single token but it is 2 tokens",
      lambda c: ["nodes", *QUICK, "--data",
                 str(c.pairs([c.pair(answer=" ".join(c.words[5:7]))])), "--out", str(c.out)]),
    F("data-lengths", "clean and corrupt of different token length",
      "line 1: expected clean and corrupt of the same token length but got 5 and 4 tokens",
      lambda c: ["nodes", *QUICK, "--data",
                 str(c.pairs([c.pair(corrupt=" ".join(c.words[:3]))])), "--out", str(c.out)]),
    F("data-too-long", "prompt longer than the model's context",
      "line 1: the prompt is 61 tokens but the model's context is 48; shorten the prompt",
      lambda c: ["nodes", *QUICK, "--data",
                 str(c.pairs([c.pair(clean=" ".join(c.words[:1] * 60),
                                     corrupt=" ".join(c.words[1:2] * 60))])),
                 "--out", str(c.out)]),
    F("task-unknown", "unknown `--task`",
      "expected a task among ['capitals', 'gendered-pronoun', 'greater-than', 'induction', "
      "'ioi'] but got 'nope'",
      lambda c: ["nodes", *QUICK, "--task", "nope", "--out", str(c.out)]),
    F("task-and-data", "`--task` and `--data` together",
      "expected --task or --data but got both; pass one of them",
      lambda c: ["nodes", *QUICK, "--task", "induction", "--data", str(c.pairs([c.pair()])),
                 "--out", str(c.out)]),
    F("metric-unknown", "unknown `--metric`",
      "expected a metric among ['kl', 'logit_diff', 'logprob', 'prob'] but got 'accuracy'",
      lambda c: ["discover", *DISCOVER, "--metric", "accuracy", "--out", str(c.out)]),
    F("method-unknown", "unknown `--method`",
      "expected a node-attribution method among … but got 'magic'",
      lambda c: ["nodes", *QUICK, "--method", "magic", "--out", str(c.out)]),
    F("kinds-unknown", "unknown `--kinds`",
      "expected node kinds among ['head', 'q', 'k', 'v', 'mlp', 'neuron'] but got ['foo']",
      lambda c: ["nodes", *QUICK, "--kinds", "head,foo", "--out", str(c.out)]),
    # ---- option values -------------------------------------------------------------------
    F("keep-nodes-negative", "`--keep-nodes -1`",
      "invalid value for '--keep-nodes': … greater than or equal to 1; see 'circuitgraph edges --help'",
      lambda c: ["edges", *QUICK, "--keep-nodes", "-1", "--out", str(c.out)], code=2, shell=True),
    F("keep-nodes-zero", "`discover --keep-nodes 0`",
      "invalid value for '--keep-nodes'",
      lambda c: ["discover", *DISCOVER, "--keep-nodes", "0", "--out", str(c.out)], code=2),
    F("n-pairs-zero", "`--n-pairs 0`", "invalid value for '--n-pairs'",
      lambda c: ["nodes", *QUICK, "--n-pairs", "0", "--out", str(c.out)], code=2),
    F("batch-size-zero", "`--batch-size 0`", "invalid value for '--batch-size'",
      lambda c: ["nodes", *QUICK, "--batch-size", "0", "--out", str(c.out)], code=2),
    F("p-out-of-range", "`diagnose --p 1.5`",
      "invalid value for '--p': expected a number strictly between 0 and 1 but got 1.5",
      lambda c: ["diagnose", *QUICK, "--p", "1.5", "--out", str(c.out)], code=2),
    F("bound-target-out-of-range", "`discover --bound-target 1.5`",
      "invalid value for '--bound-target': expected a number strictly between 0 and 1 but got 1.5",
      lambda c: ["discover", *QUICK, "--bound-target", "1.5", "--out", str(c.out)], code=2),
    F("verify-rule", "`discover --verify some`",
      "invalid value for '--verify': expected 'auto' or a whole number of top nodes (0 or more) "
      "but got 'some'",
      lambda c: ["discover", *QUICK, "--verify", "some", "--out", str(c.out)], code=2),
    F("threshold-nan", "`--edge-threshold nan`",
      "invalid value for '--edge-threshold': expected a finite number >= 0 but got nan",
      lambda c: ["discover", *DISCOVER, "--edge-threshold", "nan", "--out", str(c.out)], code=2),
    F("not-a-number", "`--n-pairs many`", "invalid value for '--n-pairs'",
      lambda c: ["nodes", "--n-pairs", "many"], code=2),
    F("unknown-option", "unknown option", "no such option: --frobnicate",
      lambda c: ["nodes", "--frobnicate"], code=2),
    F("unknown-command", "unknown command", "no such command 'frobnicate'",
      lambda c: ["frobnicate"], code=2, shell=True),
    F("two-edge-rules", "`--edge-top-n` and `--greedy` together",
      "expected one edge selection but got --edge-top-n, --greedy; pass one of them",
      lambda c: ["discover", *DISCOVER, "--edge-top-n", "5", "--greedy", "3", "--out", str(c.out)],
      code=2),
    F("target-and-rule", "`--target-faithfulness` with `--edge-top-n`",
      "expected one edge selection but got --edge-top-n, --target-faithfulness; pass one of them",
      lambda c: ["discover", *DISCOVER, "--edge-top-n", "5", "--target-faithfulness", "0.9",
                 "--out", str(c.out)], code=2),
    F("too-few-subsets", "`--diagnose-subsets 2`",
      "expected diagnose_subsets (or 0 to skip the bound) to be a whole number >= 4 but got 2",
      lambda c: [*["discover", *DISCOVER], "--diagnose-subsets", "2", "--out", str(c.out)]),
    # ---- files read back -------------------------------------------------------------
    F("circuit-missing", "circuit file that does not exist",
      "expected a readable circuit file at … but got: No such file or directory",
      lambda c: ["verify", str(c.tmp / "none.json"), "--out", str(c.out)]),
    F("circuit-not-json", "circuit file that is not JSON",
      "expected a circuit JSON file at … but it is not valid JSON (Expecting value at line 1)",
      lambda c: ["verify", str(c.text("c.json", "not json")), "--out", str(c.out)], shell=True),
    F("circuit-schema", "circuit JSON of another schema",
      "expected a circuit JSON in … (circuitgraph's schema 'circuitgraph.circuit/1', an "
      "EAP-IG/MIB circuit with 'cfg', 'nodes' and 'edges', or node-link JSON) but got 'x/1'",
      lambda c: ["verify", str(c.text("c.json", '{"schema": "x/1"}')), "--out", str(c.out)]),
    F("circuit-malformed", "circuit JSON with a node without id",
      "expected a circuit JSON in … but its content is malformed (the key 'id' is missing)",
      lambda c: ["export", str(c.text("c.json", json.dumps(
          {"schema": "circuitgraph.circuit/1", "graph": {}, "nodes": [{"x": 1}], "edges": []}))),
          "--format", "dot"]),
    F("mib-malformed", "MIB JSON whose edge is not an object",
      "expected a circuit JSON in … but its content is malformed (AttributeError: 'int' object "
      "has no attribute 'get')",
      lambda c: ["verify", str(c.text("c.json", json.dumps(
          {"cfg": {}, "nodes": {}, "edges": {"input->logits": 5}}))), "--out", str(c.out)]),
    F("node-link-malformed", "node-link JSON with a node without id",
      "expected node ids such as 'a3.h5', 'm2' or 'logits' in … but got 0; check the file",
      lambda c: ["export", str(c.text("c.json", json.dumps(
          {"directed": True, "graph": {}, "nodes": [{"x": 1}], "edges": []}))), "--format", "dot"]),
    F("graphml-garbage", "GraphML that is not XML",
      "expected a GraphML file at … but could not read it",
      lambda c: ["export", str(c.text("c.graphml", "<not xml")), "--format", "dot"]),
    F("scores-schema", "`--scores` file of another schema",
      "expected edge scores (edges.json) with schema 'circuitgraph.edge_scores/1' but got None",
      lambda c: ["export", str(c.circuit()), "--format", "mib", "--scores",
                 str(c.text("edges.json", "{}"))]),
    F("scores-malformed", "`--scores` file with a missing key",
      "expected a edge scores document (edges.json) in … but its content is malformed (the key "
      "'sources' is missing)",
      lambda c: ["export", str(c.circuit()), "--format", "mib", "--scores",
                 str(c.text("edges.json", '{"schema": "circuitgraph.edge_scores/1"}'))]),
    F("read-drawing", "a drawing given as a circuit",
      "expected a circuit file (.json, .mib.json, .node-link.json or .graphml) to read but got "
      "the svg file",
      lambda c: ["export", str(c.text("c.svg", "<svg/>")), "--format", "dot"]),
    F("format-unknown", "unknown `--format`",
      "expected a format among ['json', 'mib', 'node-link', 'graphml', 'dot', 'html', 'svg', 'png', 'pdf'] "
      "but got 'bmp'",
      lambda c: ["export", str(c.circuit()), "--format", "bmp"]),
    # ---- outputs ---------------------------------------------------------------------
    F("out-under-file", "output directory below a file",
      "cannot write to the output directory '…' (Not a directory); choose another with --out",
      lambda c: ["nodes", *QUICK, "--out", str(c.text("file", "x") / "sub")], shell=True),
    F("disk-full", "disk full while writing",
      "could not write …nodes.json: the disk is full (No space left on device); free some space",
      lambda c: ["nodes", *QUICK, "--out", str(c.out)], inject="full-disk"),
    F("picture-disk-full", "disk full while drawing `circuit.png`",
      "could not write …circuit.png: the disk is full (No space left on device)",
      lambda c: ["discover", *DISCOVER, "--json", "--out", str(c.out)],
      inject="full-disk:*circuit.png*",
      kept=("circuit.json", "circuit.dot", "circuit.html", "faithfulness.png", "nodes.csv",
            "edges.csv", "edges.json", "report.md", "manifest.json", "circuit.svg")),
    F("permission", "output file not writable",
      "could not write …nodes.json: Permission denied; choose a folder you can write to",
      lambda c: ["nodes", *QUICK, "--out", str(c.out)], inject="no-permission"),
    F("export-no-folder", "`export --out` into a missing folder",
      "expected an existing folder to write … into but … does not exist; create it first",
      lambda c: ["export", str(c.circuit()), "--format", "dot", "--out",
                 str(c.tmp / "missing" / "c.dot")], shell=True),
    F("export-disk-full", "disk full during `export`",
      "could not write …c.graphml: the disk is full",
      lambda c: ["export", str(c.circuit()), "--format", "graphml", "--out",
                 str(c.tmp / "c.graphml")], inject="full-disk"),
    # ---- the run itself ----------------------------------------------------------------
    F("internal-error", "a bug (an unexpected exception)",
      "unexpected RuntimeError: boom; run with --debug for the traceback",
      lambda c: ["nodes", *QUICK, "--out", str(c.out)], inject="bug"),
    F("out-of-memory", "out of memory on the device",
      "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); lower --batch-size",
      lambda c: ["nodes", *QUICK, "--out", str(c.out)], inject="oom"),
    F("device-failure", "a device error",
      "the device failed (CUDA error: an illegal memory access was encountered); run with "
      "--debug for the traceback",
      lambda c: ["nodes", *QUICK, "--out", str(c.out)], inject="cuda-error"),
    F("broken-pipe", "stdout closed by the reader (`... --json | head -1`)",
      "the output pipe was closed before the command finished (broken pipe)",
      lambda c: ["nodes", *QUICK, "--json", "--out", str(c.out)], inject="broken-pipe",
      kept=("nodes.json", "nodes.csv", "manifest.json")),
    # ---- signals (a subprocess; the run pauses at the point named, then gets the signal) --
    *(
        F(f"sig{sig.lower()}-{at}", f"{'Ctrl-C (SIGINT)' if sig == 'INT' else 'SIGTERM'} "
          f"during {what}",
          f"{'interrupted by SIGINT (Ctrl-C)' if sig == 'INT' else 'terminated by SIGTERM'}; "
          "files not finished were removed",
          lambda c: ["discover", *DISCOVER, "--out", str(c.out)],
          code=130 if sig == "INT" else 143, inject=f"pause:{at}", signal=sig,
          kept=("circuit.json", "circuit.dot") if at == "write" else ())
        for sig in ("INT", "TERM")
        for at, what in (("load", "model loading"), ("screen", "screening"),
                         ("write", "writing the outputs"))
    ),
)  # fmt: skip


# --------------------------------------------------------------------------------------
# Injected faults (usable in-process and in tests/cli/fault_driver.py)
# --------------------------------------------------------------------------------------

#: where ``pause:write`` stops: inside the write of the third output file, its temporary
#: file present, two files finished
PAUSE_WRITE_AT = 3


def _fd_path(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}")
    return ""


@contextlib.contextmanager
def _swap(owner: Any, name: str, value: Any) -> Iterator[None]:
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def _pause(marker: Path | None, where: str) -> None:
    if marker is not None:
        marker.write_text(where)
    time.sleep(600)  # the test sends a signal meanwhile


@contextlib.contextmanager
def inject(name: str | None, marker: Path | None = None) -> Iterator[None]:
    """Patch the fault ``name`` into this process for the duration of the block.

    ``full-disk[:GLOB]``: every write (of a file matching GLOB) fails with ENOSPC when it
    syncs; ``no-permission``: creating an output file fails with EACCES; ``hub-offline``;
    ``bug`` / ``oom`` / ``cuda-error``: node attribution raises; ``pause:load|screen|write``:
    the run writes ``marker`` and sleeps at that point (for a signal).
    """
    if name is None:
        yield
        return
    kind, _, arg = name.partition(":")
    with _PATCHES[kind](arg, marker):
        yield


@contextlib.contextmanager
def _full_disk(glob: str, marker: Path | None) -> Iterator[None]:
    real = os.fsync

    def fsync(fd: int) -> None:
        if fnmatch.fnmatch(_fd_path(fd), glob or "*"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    with _swap(os, "fsync", fsync):
        yield


@contextlib.contextmanager
def _no_permission(arg: str, marker: Path | None) -> Iterator[None]:
    import tempfile

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with _swap(tempfile, "mkstemp", mkstemp):
        yield


@contextlib.contextmanager
def _hub_offline(arg: str, marker: Path | None) -> Iterator[None]:
    import huggingface_hub.constants as hf

    with _swap(hf, "HF_HUB_OFFLINE", True):
        yield


def _raising(make: Callable[[], BaseException]) -> Callable[[str, Path | None], Any]:
    @contextlib.contextmanager
    def patch(arg: str, marker: Path | None) -> Iterator[None]:
        import circuitgraph.attribution as attribution

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise make()

        with _swap(attribution, "attribute_nodes", broken):
            yield

    return patch


def _oom() -> BaseException:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@contextlib.contextmanager
def _pause_at(point: str, marker: Path | None) -> Iterator[None]:
    if point == "load":
        import circuitgraph.model as model

        real_device = model.resolve_device

        def resolve_device(*args: Any, **kwargs: Any) -> Any:
            _pause(marker, "load")
            return real_device(*args, **kwargs)

        with _swap(model, "resolve_device", resolve_device):
            yield
    elif point == "screen":
        import circuitgraph.pipeline as pipeline

        real_nodes = pipeline.attribute_nodes

        def attribute_nodes(*args: Any, **kwargs: Any) -> Any:
            _pause(marker, "screen")
            return real_nodes(*args, **kwargs)

        with _swap(pipeline, "attribute_nodes", attribute_nodes):
            yield
    elif point == "write":
        real_fsync, calls = os.fsync, [0]

        def fsync(fd: int) -> None:
            calls[0] += 1
            if calls[0] == PAUSE_WRITE_AT:
                _pause(marker, "write")
            real_fsync(fd)

        with _swap(os, "fsync", fsync):
            yield
    else:
        raise ValueError(f"unknown pause point {point!r}")


@contextlib.contextmanager
def _broken_pipe(arg: str, marker: Path | None) -> Iterator[None]:
    from circuitgraph.cli import common

    def result(self: Any, summary: Any, text: str) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    with _swap(common.Output, "result", result):
        yield


_PATCHES: dict[str, Callable[[str, Path | None], Any]] = {
    "broken-pipe": _broken_pipe,
    "full-disk": _full_disk,
    "no-permission": _no_permission,
    "hub-offline": _hub_offline,
    "bug": _raising(lambda: RuntimeError("boom")),
    "oom": _raising(_oom),
    "cuda-error": _raising(
        lambda: RuntimeError("CUDA error: an illegal memory access was encountered")
    ),
    "pause": _pause_at,
}


# --------------------------------------------------------------------------------------
# The README's table
# --------------------------------------------------------------------------------------

README_START = "<!-- errors table: generated by `python -m tests.cli.faults`; do not edit -->"
README_END = "<!-- end of errors table -->"


def readme_table() -> str:
    """The README's table of errors, one row per fault."""
    lines = [README_START, "", "| input or fault | exit | message on stderr (abridged) |",
             "|---|---:|---|"]  # fmt: skip
    for f in FAULTS:
        message = f.message.replace("|", "\\|")
        lines.append(f"| {f.what} | {f.code} | `error: {message}` |")
    return "\n".join([*lines, "", README_END])


if __name__ == "__main__":
    print(readme_table())
