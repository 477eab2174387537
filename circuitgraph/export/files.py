"""Writing files atomically and reading them back, with one-sentence errors.

A temporary file in the target's folder, then a rename: a failed or interrupted write
leaves the old file (or none) and no temporary file behind.

JSON is always strict: :func:`dumps` writes every NaN or infinite number as ``null`` and
says so in a ``warnings`` list of the same document (:func:`finite_json`), so that strict
parsers (``jq``, JavaScript) read every file circuitgraph writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from circuitgraph.errors import DataError, ExportError

__all__ = [
    "PathLike",
    "atomic_write",
    "dumps",
    "finite_json",
    "load_json",
    "read_text",
    "remove_temp_files",
]

PathLike = str | os.PathLike[str]

#: temporary files of atomic writes not yet renamed or removed. atomic_write removes its
#: own on any exception; one is left here only if the removal itself was interrupted (a
#: second signal), and :func:`remove_temp_files` (called by the CLI on a signal) finishes it.
_IN_FLIGHT: set[str] = set()


def atomic_write(path: PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` all at once: a temp file in the same folder, then rename.

    A failure leaves the old file (or none) and no temp file behind. Text is UTF-8.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "x.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise ExportError(
            f"expected an existing folder to write {target} into but {target.parent} does not "
            "exist; create it first"
        )
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(target, exc) from exc
    _IN_FLIGHT.add(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # if this fails too, remove_temp_files finishes it
            os.unlink(tmp)
            _IN_FLIGHT.discard(tmp)
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from exc
        raise
    _IN_FLIGHT.discard(tmp)
    return target


def _write_error(target: Path, exc: OSError) -> ExportError:
    """One sentence for a failed write; a full disk and a refused permission say so."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExportError(
            f"could not write {target}: the disk is full ({exc.strerror}); free some space or "
            "write to another folder"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(
            f"could not write {target}: {exc.strerror}; choose a folder you can write to"
        )
    return ExportError(
        f"could not write {target}: {exc.strerror or exc}; check the path, its permissions "
        "and the free disk space"
    )


def remove_temp_files() -> list[Path]:
    """Remove the temporary files of interrupted atomic writes; returns those removed.

    Example:
        >>> remove_temp_files()
        []
    """
    removed = []
    for tmp in sorted(_IN_FLIGHT):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed.append(Path(tmp))
        _IN_FLIGHT.discard(tmp)
    return removed


def _file_mode(target: Path) -> int:
    """Keep an existing file's mode; a new file gets the usual 0o666 minus the umask."""
    with contextlib.suppress(OSError):
        return target.stat().st_mode & 0o7777
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read from /proc where possible (os.umask must set it to read it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(x for x in status if x.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_text(path: PathLike, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(
            f"expected a readable {what} file at {path} but got: {exc.strerror or exc}; "
            "check the path"
        ) from exc


def load_json(path: PathLike, what: str) -> Any:
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"expected a {what} JSON file at {path} but it is not valid JSON ({exc.msg} at "
            f"line {exc.lineno}); check the file"
        ) from exc


#: at most this many non-finite values are named one by one in a document's warnings
_MAX_NAMED = 10


def finite_json(data: Any) -> tuple[Any, list[str]]:
    """``data`` with every NaN or infinite float replaced by None, and the warnings that say
    where (``faithfulness: NaN written as null``; after ten, one line counts the rest).

    Example:
        >>> finite_json({"f": float("nan"), "xs": [1.0, float("inf")]})
        ({'f': None, 'xs': [1.0, None]}, ['f: NaN written as null', 'xs[1]: inf written as null'])
    """
    found: list[str] = []

    def walk(x: Any, where: str) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            found.append(f"{where or 'value'}: {x!r} written as null".replace("nan", "NaN"))
            return None
        if isinstance(x, Mapping):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return x

    clean = walk(data, "")
    if len(found) > _MAX_NAMED:
        rest = len(found) - _MAX_NAMED
        found = [*found[:_MAX_NAMED], f"... and {rest} more NaN or infinite values written as null"]
    return clean, found


def dumps(
    data: Any,
    indent: int | None = 1,
    default: Callable[[Any], Any] | None = None,
    annotate: bool = True,
) -> str:
    """Strict JSON text (no NaN, no Infinity) ending in a newline.

    Non-finite numbers become null (:func:`finite_json`); a dict document then gets (or
    extends) a ``warnings`` list saying which (unless ``annotate=False``: a value encoded
    inside another format, whose keys are not ours to add to).

    Example:
        >>> print(dumps({"f": float("nan")}, indent=None), end="")
        {"f": null, "warnings": ["f: NaN written as null"]}
    """
    clean, notes = finite_json(data)
    if notes and annotate and isinstance(clean, dict):
        before = clean.get("warnings")
        before = before if isinstance(before, list) else ([] if before is None else [before])
        clean["warnings"] = [*before, *notes]
    try:
        text = json.dumps(
            clean, indent=indent, ensure_ascii=False, allow_nan=False, default=default
        )
        return text + "\n"
    except (TypeError, ValueError) as exc:
        raise ExportError(
            f"expected JSON-like attribute values (numbers, strings, lists, dicts) but got: "
            f"{exc}; convert that attribute first"
        ) from exc
