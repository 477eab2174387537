"""Checks that a task's words suit a tokenizer: single tokens, known words.

A word counts as one token when `` word`` (with its leading space, as it stands inside a
prompt) encodes to one id that is not the unknown token, so word-level and GPT-2-style BPE
tokenizers are judged alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from circuitgraph.errors import DataError

__all__ = [
    "ENGLISH",
    "one_token",
    "require_enough",
    "require_known",
    "require_single",
    "single_tokens",
]

#: the fix a task suggests when it needs ordinary English words as single tokens
ENGLISH = (
    "this task needs a real model's English vocabulary, such as that of zoo:smollm2-135m, "
    "which the word-level zoo models lack"
)


def one_token(tokenizer: Any, word: str) -> bool:
    ids = tokenizer.encode(f" {word}", add_special_tokens=False)
    unk = getattr(tokenizer, "unk_token_id", None)
    return len(ids) == 1 and (unk is None or ids[0] != unk)


def single_tokens(tokenizer: Any, words: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``words`` into those that are one known token (with a leading space) and the rest.

    Example:
        >>> from circuitgraph.zoo.tokenizer import build_word_tokenizer
        >>> single_tokens(build_word_tokenizer(["Mary"]), ["Mary", "Zed"])
        (['Mary'], ['Zed'])
    """
    ok = [w for w in words if one_token(tokenizer, w)]
    good = set(ok)
    return ok, [w for w in words if w not in good]


def require_single(
    tokenizer: Any, words: Sequence[str], what: str, task: str, hint: str = ""
) -> None:
    """Refuse a tokenizer in which some of ``words`` are not single tokens, naming them."""
    _, bad = single_tokens(tokenizer, words)
    if bad:
        shown = ", ".join(repr(w) for w in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise DataError(
            f"task {task!r}: expected every {what} to be a single token of this tokenizer but "
            f"{len(bad)} are not ({shown}); "
            + (hint or "use a tokenizer whose vocabulary has them, or a data file (--data) instead")
        )


def require_known(tokenizer: Any, text: str, task: str) -> None:
    """Refuse prompts whose fixed words the tokenizer maps to its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in tokenizer.encode(text, add_special_tokens=False):
        return
    words = re.findall(r"\w+|[^\w\s]", text)
    bad = sorted({w for w in words if unk in tokenizer.encode(w, add_special_tokens=False)})
    raise DataError(
        f"task {task!r}: expected the prompt words to be in the tokenizer's vocabulary but "
        f"{bad} are unknown; use a tokenizer whose vocabulary has them"
    )


def require_enough(
    tokenizer: Any, words: Sequence[str], minimum: int, what: str, task: str, hint: str = ""
) -> list[str]:
    """The words of ``words`` that are single tokens here, refusing fewer than ``minimum``.

    Example:
        >>> from circuitgraph.zoo.tokenizer import build_word_tokenizer
        >>> require_enough(build_word_tokenizer(["Mary", "John"]), ["Mary", "Zed", "John"], 2, "name", "ioi")
        ['Mary', 'John']
    """
    ok, bad = single_tokens(tokenizer, words)
    if len(ok) < minimum:
        shown = ", ".join(repr(w) for w in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise DataError(
            f"task {task!r}: expected at least {minimum} {what}s that are single tokens of this "
            f"tokenizer but {len(ok)} of {len(words)} are (not: {shown}); "
            + (hint or "use a tokenizer whose vocabulary has them, or a data file (--data)")
        )
    return ok
