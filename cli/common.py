"""What every command shares: loading the model and pairs, progress, writing outputs."""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from circuitgraph.errors import ConfigError, ExportError

from . import guard

if TYPE_CHECKING:  # torch loads only when a command needs it (fast --help)
    from circuitgraph.scores import EdgeScores, NodeScores

DEFAULT_MODEL = "zoo:attn-only-2l"
DEFAULT_TASK = "induction"


@dataclass(frozen=True)
class Output:
    """How a command talks: progress bars and a summary, or nothing but JSON.

    Under ``torchrun`` only the lead process (rank 0) talks.
    """

    quiet: bool = False
    as_json: bool = False

    def say(self, text: str) -> None:
        if not (self.quiet or self.as_json) and lead():
            typer.echo(text)

    def result(self, summary: dict[str, Any], text: str) -> None:
        """The command's closing summary: one strict JSON object with --json (NaN and
        infinities as null; ``warnings``, ``notes`` and ``skipped`` files when there are
        any), else the text."""
        if not lead():
            return
        if self.as_json:
            typer.echo(dumps(with_ledger(summary), default=str), nl=False)
        elif not self.quiet:
            typer.echo(text)

    @contextmanager
    def stages(self) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
        """A progress bar per stage on stderr (none with --quiet/--json or off a terminal)."""
        if self.quiet or self.as_json or not sys.stderr.isatty() or not lead():
            yield lambda name, total: lambda done: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description:<22}"), BarColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        ) as bar:  # fmt: skip

            def stage(name: str, total: int) -> Callable[[int], None]:
                task = bar.add_task(name, total=total if total > 0 else None)
                return lambda done: bar.advance(task, done)

            yield stage


def with_ledger(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary plus the run's warnings, notes and skipped files (when there are any)."""
    run = guard.ledger()
    extra = {"warnings": run.warnings, "notes": run.notes, "skipped": run.skipped}
    return {**summary, **{k: list(v) for k, v in extra.items() if v}}


def fail(err: Exception, code: int = 1) -> typer.Exit:
    """Print a one-line error and make the exit that goes with it."""
    guard.say_error(str(err))
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Kept for the commands' structure: every error is now turned into one line and its
    exit code by the boundary around every command (``cli/guard.py``)."""
    yield


def check_names(
    metric: str | None = None, node_method: str | None = None, edge_method: str | None = None
) -> None:
    """Refuse an unknown metric or method before any model is loaded."""
    from circuitgraph.attribution import get_estimator
    from circuitgraph.tasks.metrics import get_metric

    if metric is not None:
        get_metric(metric)
    if node_method is not None:
        get_estimator(node_method, "node")
    if edge_method is not None:
        get_estimator(edge_method, "edge")


def lead() -> bool:
    """Whether this process writes files and prints: always, except under ``torchrun``,
    where only rank 0 does (every rank computes the same results)."""
    return int(os.environ.get("RANK", "0")) == 0


def edge_fractions(text: str | None) -> tuple[float, ...]:
    """``--edge-fractions``: MIB's grid by default, ``none`` for no CPR/CMD, else a
    comma-separated list of fractions of the model's edges."""
    from circuitgraph.faithfulness import MIB_FRACTIONS, check_fractions

    if text is None:
        return MIB_FRACTIONS
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"expected --edge-fractions as comma-separated numbers (e.g. 0.01,0.1,1) or 'none' "
            f"but got {text!r}"
        ) from None
    return check_fractions(values)


def load(model_spec: str, device: str | None, dtype: str | None) -> tuple[Any, Any]:
    """Load the model; under ``torchrun`` first join the process group, each process on its
    own GPU (``cuda:LOCAL_RANK``) with NCCL, or on the CPU with gloo."""
    from circuitgraph.model import load_model

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = _join_process_group(device)
    return load_model(model_spec, device=device, dtype=dtype)


def _join_process_group(device: str | None) -> str:
    import atexit

    import torch
    import torch.distributed as dist

    from circuitgraph.model import resolve_device

    gpu = resolve_device(device).type == "cuda"
    if gpu and (device is None or device == "cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if gpu:
        torch.cuda.set_device(torch.device(str(device)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
        atexit.register(dist.destroy_process_group)
    return str(resolve_device(device))


def load_data(
    model: Any,
    info: Any,
    task: str | None,
    data: Path | None,
    n_pairs: int,
    seed: int,
    bos: bool | None = None,
) -> tuple[Any, str]:
    """Prompt pairs from ``--data`` or a built-in ``--task``; returns (pairs, source label).
    ``bos``: --bos / --no-bos (None: the tokenizer's convention)."""
    from circuitgraph.tasks import load_pairs, make_pairs

    if task is not None and data is not None:
        raise ConfigError("expected --task or --data but got both; pass one of them")
    if data is not None:
        pairs = load_pairs(data, model.tokenizer, max_len=info.n_ctx, bos=bos)
        if n_pairs and len(pairs) > n_pairs:
            pairs = pairs.select(slice(0, n_pairs))
        return pairs, str(data)
    name = task or DEFAULT_TASK
    if n_pairs < 1:
        raise ConfigError(f"expected --n-pairs of at least 1 but got {n_pairs}")
    pairs = make_pairs(name, model.tokenizer, n_pairs, seed=seed, max_len=info.n_ctx, bos=bos)
    return pairs, name


def out_dir(path: Path) -> Path:
    """Create the output directory, or say in one line why it cannot be used (the lead
    process only, under ``torchrun``).

    The folders it creates are noted, so that a failed run removes them when left empty.
    """
    if not lead():
        return path
    guard.record_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / guard.PROBE
        try:
            probe.write_text("")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise ExportError(
            f"cannot write to the output directory {str(path)!r} ({err.strerror}); choose "
            "another with --out"
        ) from None
    return path


def write(path: Path, data: str | bytes) -> Path:
    """Write one output file atomically (the lead process only, under ``torchrun``)."""
    if not lead():
        return path
    from circuitgraph.export import atomic_write

    return atomic_write(path, data)


def node_csv(scores: NodeScores, exact: dict[str, float] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "node", "kind", "layer", "index", "position", "signed", "score", "exact"])
    for rank, n in enumerate(scores.ranking(), 1):
        signed, score = scores[n]
        x = (exact or {}).get(n.id)
        w.writerow(
            [rank, n.id, n.kind, n.layer, _blank(n.index), _blank(n.position), f"{signed:.9g}",
             f"{score:.9g}", "" if x is None else f"{x:.9g}"]
        )  # fmt: skip
    return buf.getvalue()


def edge_csv(scores: EdgeScores, in_circuit: set[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "edge", "source", "target", "signed", "score", "in_circuit"])
    for rank, e in enumerate(scores.ranking(), 1):
        signed, score = scores[e]
        inside = "" if in_circuit is None else str(e.id in in_circuit).lower()
        w.writerow([rank, e.id, e.src.id, e.dst.id, f"{signed:.9g}", f"{score:.9g}", inside])
    return buf.getvalue()


def _blank(x: int | None) -> str | int:
    return "" if x is None else x


def dumps(data: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON for every file and summary (the library's one sanitiser: NaN and
    infinities become null, listed under ``warnings``). Imported here, not at the top:
    the export package loads torch, which ``--help`` must not wait for."""
    from circuitgraph.export.files import dumps as strict_dumps

    return strict_dumps(data, indent=1, default=default)
