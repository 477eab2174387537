"""Prompt pairs from a user's file: JSONL (one object a line) or CSV (a header row).

Every record has the string fields ``clean``, ``corrupt``, ``answer`` and ``wrong``; other
fields are ignored. Errors are :class:`~circuitgraph.errors.DataError` sentences naming the
file, the line and the field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitgraph.errors import DataError
from circuitgraph.tasks.pairs import PromptPairs, TextPair, tokenize_pairs

__all__ = ["FIELDS", "READERS", "load_pairs", "load_pairs_file"]

FIELDS: tuple[str, ...] = ("clean", "corrupt", "answer", "wrong")

Numbered = list[tuple[int, TextPair]]  # (line number, pair)


def _pair(record: Any, path: Path, line: int) -> TextPair:
    """A TextPair from one parsed record, or a DataError naming the line and field."""
    if not isinstance(record, dict):
        raise DataError(
            f"{path} line {line}: expected an object with fields {list(FIELDS)} but got "
            f"{type(record).__name__}; write one JSON object per line"
        )
    for field in FIELDS:
        value = record.get(field)
        if value is None:
            raise DataError(
                f"{path} line {line}: expected the field {field!r} but it is missing; every "
                f"record needs {list(FIELDS)}"
            )
        if not isinstance(value, str):
            raise DataError(
                f"{path} line {line}: expected the field {field!r} to be a string but got "
                f"{type(value).__name__} {value!r}; quote it"
            )
        if not value.strip():
            raise DataError(f"{path} line {line}: the field {field!r} is empty; fill it in")
    return TextPair(*(record[f] for f in FIELDS))


def _read_jsonl(path: Path) -> Numbered:
    out = []
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue  # blank lines (a trailing newline, spacing) are allowed
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path} line {line}: expected a JSON object but the line is malformed "
                    f"({err.msg} at column {err.colno}); fix the JSON on that line"
                ) from None
            out.append((line, _pair(record, path, line)))
    return out


def _read_csv(path: Path) -> Numbered:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [f for f in FIELDS if f not in (reader.fieldnames or [])]
        if reader.fieldnames and missing:
            raise DataError(
                f"{path} line 1: expected a header with the columns {list(FIELDS)} but "
                f"{missing} are missing; add them to the header row"
            )
        # reader.line_num is the line the row ended on (rows may span lines when quoted).
        return [(reader.line_num, _pair(row, path, reader.line_num)) for row in reader]


#: file suffix -> reader returning (line number, pair) records
READERS: dict[str, Callable[[Path], Numbered]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".csv": _read_csv,
}


def _read(path: str | Path) -> Numbered:
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"expected a data file ending in one of {sorted(READERS)} but got {str(path)!r}; "
            "rename it or convert it to JSONL or CSV"
        )
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; check the path")
    records = reader(path)
    if not records:
        raise DataError(
            f"{path}: expected at least one prompt pair but the file has none; add records "
            f"with the fields {list(FIELDS)}"
        )
    return records


def load_pairs_file(path: str | Path) -> list[TextPair]:
    """Read text pairs from a JSONL or CSV file.

    Example:
        >>> import json, tempfile, os
        >>> row = {"clean": "a b", "corrupt": "a c", "answer": " d", "wrong": " e"}
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        ...     _ = f.write(json.dumps(row) + "\\n")
        >>> load_pairs_file(f.name)[0].answer
        ' d'
        >>> os.unlink(f.name)
    """
    return [pair for _, pair in _read(path)]


def load_pairs(
    path: str | Path, tokenizer: Any, max_len: int | None = None, bos: bool | None = None
) -> PromptPairs:
    """Read and tokenize a pairs file; errors name the file's line. ``bos`` as in
    :func:`~circuitgraph.tasks.pairs.tokenize_pairs` (None: the tokenizer's convention).

    Example:
        >>> pairs = load_pairs("pairs.jsonl", model.tokenizer)  # doctest: +SKIP
    """
    records = _read(path)
    return tokenize_pairs(
        tokenizer,
        [pair for _, pair in records],
        bos=bos,
        max_len=max_len,
        labels=[f"{path} line {line}" for line, _ in records],
    )
