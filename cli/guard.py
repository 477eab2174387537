"""The command line's one error boundary: every failure is one line and a documented exit code.

Exit codes:

====  =====================================================================================
0     success
1     an error: a user mistake (model, data, option values), a file that cannot be read or
      written (full disk, permission), a device problem, or an unexpected error
2     a malformed command line (unknown option, a value of the wrong type or range)
130   interrupted by SIGINT (Ctrl-C)
143   terminated by SIGTERM
====  =====================================================================================

Whatever the failure, the command leaves no temporary file and removes every output folder
it created and left empty; files it had finished writing stay. An error is one line on
stderr (``error: ...``), never a traceback, unless ``--debug`` is given (or
``CIRCUITGRAPH_DEBUG=1``), which shows the traceback of errors other than signals.

Warnings (:class:`~circuitgraph.errors.CircuitGraphWarning`) are one ``warning: ...`` line
each on stderr and are listed under ``warnings`` in a ``--json`` summary.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import Context
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import Context  # type: ignore[assignment]
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment]

from circuitgraph.errors import CircuitGraphError, CircuitGraphWarning

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143
#: the name of the probe file that checks an output folder is writable
PROBE = ".circuitgraph-write-test"
DEBUG_HINT = "run with --debug for the traceback"


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, so that no ``except Exception`` swallows it."""


@dataclass
class Ledger:
    """What one command did that a failure must undo or a summary must report."""

    created: list[Path] = field(default_factory=list)  # folders this run made, parents first
    out_dirs: list[Path] = field(default_factory=list)  # every output folder it used
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    debug: bool = False


_ledger = Ledger()


def ledger() -> Ledger:
    """The current command's ledger."""
    return _ledger


def record_out_dir(path: Path) -> None:
    """Note an output folder (and which of it and its parents do not exist yet) before it
    is created, so that a failure removes what this run made and left empty."""
    new = [p for p in (path, *path.parents) if not p.exists()]
    _ledger.created.extend(p for p in reversed(new) if p not in _ledger.created)
    if path not in _ledger.out_dirs:
        _ledger.out_dirs.append(path)


def note(text: str, skipped: Sequence[str] = ()) -> None:
    """An expected, documented skip (no Graphviz ``dot``): a line for people, and ``notes``
    and ``skipped`` in a ``--json`` summary."""
    _ledger.notes.append(text)
    _ledger.skipped.extend(skipped)


# --------------------------------------------------------------------------------------
# The Click group every command runs in
# --------------------------------------------------------------------------------------


class GuardedGroup(TyperGroup):
    """Typer's group with the boundary around parsing (usage errors: one line, exit 2) and
    around every command (everything else: one line, exit 1, 130 or 143, and clean-up)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        global _ledger
        _ledger = Ledger()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            code = exc.exit_code
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one has shown the help
                say_error(_usage_sentence(exc))
        except typer.Abort:  # EOF on a prompt (there are none) or Ctrl-C in parsing
            code = EXIT_SIGINT
            say_error("interrupted")
        code = code if isinstance(code, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: Context) -> Any:
        _ledger.debug = bool(ctx.params.get("debug"))
        with boundary():
            return super().invoke(ctx)


def _usage_sentence(exc: ClickException) -> str:
    text = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, UsageError) and ctx is not None:
        text = text.rstrip(".")
        text = f"{text[:1].lower()}{text[1:]}; see '{ctx.command_path} --help'"
    return text


def say_error(text: str) -> None:
    """The one line a failure prints."""
    typer.echo(f"error: {' '.join(str(text).split())}", err=True)


# --------------------------------------------------------------------------------------
# The boundary
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def boundary() -> Iterator[None]:
    """Run a command: SIGTERM raises :class:`Terminated`, warnings become one line each, and
    any failure is cleaned up and turned into one line and its exit code (typer.Exit)."""
    with _signals(), _warnings_as_lines():
        try:
            yield
        except BaseException as exc:  # this is the boundary: everything ends here
            with _signals_ignored():  # a second Ctrl-C must not cut the clean-up short
                _fail(exc)


def _fail(exc: BaseException) -> None:
    """Clean up after ``exc``, then re-raise it (Click's own exits and usage errors, and
    everything with --debug) or raise the exit that goes with its one printed line."""
    if isinstance(exc, typer.Exit) and exc.exit_code == EXIT_OK:
        raise exc
    if isinstance(exc, (SystemExit, GeneratorExit)):
        raise exc
    clean_up()
    if isinstance(exc, (typer.Exit, ClickException, typer.Abort)):
        raise exc
    text, code = sentence(exc)
    if _ledger.debug and code == EXIT_ERROR:
        raise exc
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        _silence_stdout()  # the reader is gone: no second error when Python flushes stdout
    say_error(text)
    raise typer.Exit(code) from None


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def sentence(exc: BaseException) -> tuple[str, int]:
    """The one sentence and exit code for an exception that reached the boundary."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT (Ctrl-C); files not finished were removed", EXIT_SIGINT
    if isinstance(exc, Terminated):
        return "terminated by SIGTERM; files not finished were removed", EXIT_SIGTERM
    if isinstance(exc, CircuitGraphError):
        return str(exc), EXIT_ERROR
    if isinstance(exc, OSError):
        return _os_sentence(exc), EXIT_ERROR
    name = type(exc).__name__
    first = _first_line(exc)
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":
        return (
            f"out of memory ({first}); lower --batch-size, use --dtype bfloat16 or a device "
            "with more memory",
            EXIT_ERROR,
        )
    if name == "SafetensorError":
        return (
            f"could not read a safetensors file ({first}); it is truncated or corrupt, so save "
            "or download it again",
            EXIT_ERROR,
        )
    if isinstance(exc, RuntimeError) and any(w in first for w in ("CUDA", "cuDNN", "NCCL", "MPS")):
        return f"the device failed ({first}); {DEBUG_HINT}", EXIT_ERROR
    return f"unexpected {name}: {first}; {DEBUG_HINT}", EXIT_ERROR


def _os_sentence(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"could not write{where}: the disk is full; free some space or choose another --out"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for{where or ' a file'} ({exc.strerror}); choose another path"
    if exc.errno == errno.EPIPE:
        return "the output pipe was closed before the command finished (broken pipe)"
    if exc.errno == errno.ENOENT:
        return f"no such file or folder:{where or ' (unnamed)'}; check the path"
    return f"{exc.strerror or _first_line(exc)}{':' + where if where else ''}; {DEBUG_HINT}"


def _first_line(exc: BaseException) -> str:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return lines[0] if lines else type(exc).__name__


def clean_up() -> None:
    """Remove temporary files and the output folders this run created and left empty."""
    from circuitgraph.export.files import remove_temp_files

    remove_temp_files()
    for folder in _ledger.out_dirs:
        with contextlib.suppress(OSError):
            (folder / PROBE).unlink(missing_ok=True)
    for folder in reversed(_ledger.created):  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


# --------------------------------------------------------------------------------------
# Signals and warnings
# --------------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` and SIGINT KeyboardInterrupt while the command runs."""
    if not _main_thread():  # only the main thread may set handlers
        yield
        return
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if not _main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Every CircuitGraphWarning once, as one ``warning:`` line on stderr; others only with
    --debug (libraries' own warnings are not the user's business)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CircuitGraphWarning)
        default: Callable[..., None] = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, CircuitGraphWarning):
                text = " ".join(str(message).split())
                if text not in _ledger.warnings:
                    _ledger.warnings.append(text)
                    typer.echo(f"warning: {text}", err=True)
            elif _ledger.debug:
                default(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield
