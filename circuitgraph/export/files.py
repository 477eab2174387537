"""Writing files atomically and reading them back, with one-sentence errors.

A temporary file in the target's folder, then a rename: a failed or interrupted write
leaves the old file (or none) and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from circuitgraph.errors import DataError, ExportError

__all__ = ["PathLike", "atomic_write", "dumps", "load_json", "read_text"]

PathLike = str | os.PathLike[str]


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
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ExportError(
                f"could not write {target}: {exc.strerror or exc}; check the path, its "
                "permissions and the free disk space"
            ) from exc
        raise
    return target


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


def dumps(data: Any, indent: int | None = 1) -> str:
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ExportError(
            f"expected JSON-like attribute values (numbers, strings, lists, dicts) but got: "
            f"{exc}; convert that attribute first"
        ) from exc
