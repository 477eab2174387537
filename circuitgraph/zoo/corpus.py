"""The synthetic training corpus of the zoo, and its word-level vocabulary.

Documents come from the same samplers as the built-in tasks (:mod:`circuitgraph.tasks.builtin`):
IOI sentences with the answer appended, repeated random words, greater-than sentences with a
later year, and filler sentences. Names, words and years are drawn at random for every
document, so a model can only lower its loss on the task positions by *using* a mechanism
(find the name that occurs once, copy what followed the earlier occurrence, compare years),
not by memorising sentences.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache

from circuitgraph.tasks import builtin as tasks

__all__ = ["DOCUMENTS", "MIXES", "content_words", "sample_documents", "vocabulary"]

_VERBS = ("sees", "likes", "finds", "takes", "makes", "needs", "wants", "holds", "moves", "keeps")
_ADJECTIVES = ("big", "small", "old", "new", "red", "blue", "green", "happy", "quiet", "bright")
_FILLER_TEMPLATES = (
    "the {ADJ} {NOUN} {VERB} the {NOUN2} .",
    "a {NOUN} is {ADJ} and the {NOUN2} is {ADJ2} .",
    "{NAME} {VERB} the {ADJ} {NOUN} near the {NOUN2} .",
    "in the year {CC} {YY} the {NOUN} was {ADJ} .",
    "{NAME} and the {NOUN} went to the {PLACE} .",
)
_PUNCTUATION = (",", ".")
# Induction documents repeat sequences a little shorter and longer than the task's prompts.
_INDUCTION_TRAIN_LENGTHS = (tasks.INDUCTION_LENGTHS[0] - 2, tasks.INDUCTION_LENGTHS[1] + 4)


def _words_of(text: str) -> list[str]:
    """The tokens the word-level tokenizer makes of a template (placeholders dropped)."""
    return re.findall(r"\w+|[^\w\s]", re.sub(r"\{\w+\}", " ", text))


@cache
def vocabulary() -> tuple[str, ...]:
    """Every word the corpus and the built-in tasks use, in a fixed order.

    Example:
        >>> "Mary" in vocabulary() and "17" in vocabulary() and "," in vocabulary()
        True
    """
    templates = (*tasks.IOI_TEMPLATES, *tasks.GREATER_THAN_TEMPLATES, *_FILLER_TEMPLATES)
    groups: Sequence[Sequence[str]] = (
        _PUNCTUATION,
        [w for t in templates for w in _words_of(t)],
        tasks.NAMES,
        tasks.NUMBERS,
        tasks.IOI_PLACES,
        tasks.IOI_OBJECTS,
        tasks.GREATER_THAN_NOUNS,
        tasks.INDUCTION_WORDS,
        _VERBS,
        _ADJECTIVES,
    )
    return tuple(dict.fromkeys(w for group in groups for w in group))


@cache
def content_words() -> tuple[str, ...]:
    """The vocabulary without punctuation: what random induction sequences are drawn from."""
    return tuple(w for w in vocabulary() if w not in _PUNCTUATION)


def _ioi_document(rng: random.Random) -> str:
    ex = tasks.sample_ioi(rng)
    return f"{ex.clean} {ex.io} ."


def _induction_document(rng: random.Random) -> str:
    words = rng.sample(content_words(), rng.randint(*_INDUCTION_TRAIN_LENGTHS))
    return " ".join(words + words)


def _greater_than_document(rng: random.Random) -> str:
    ex = tasks.sample_greater_than(rng)
    return f"{ex.clean} {ex.answer} ."


def _filler_document(rng: random.Random) -> str:
    nouns = tasks.INDUCTION_WORDS
    return rng.choice(_FILLER_TEMPLATES).format(
        ADJ=rng.choice(_ADJECTIVES),
        ADJ2=rng.choice(_ADJECTIVES),
        NOUN=rng.choice(nouns),
        NOUN2=rng.choice(nouns),
        VERB=rng.choice(_VERBS),
        NAME=rng.choice(tasks.NAMES),
        PLACE=rng.choice(tasks.IOI_PLACES),
        CC=rng.choice(tasks.NUMBERS),
        YY=rng.choice(tasks.NUMBERS),
    )


#: document kind -> sampler of one document (text, without BOS)
DOCUMENTS: dict[str, Callable[[random.Random], str]] = {
    "ioi": _ioi_document,
    "induction": _induction_document,
    "greater-than": _greater_than_document,
    "filler": _filler_document,
}

#: named mixtures: document kind -> share of the documents
MIXES: dict[str, dict[str, float]] = {
    "induction": {"induction": 1.0},
    "all": {"ioi": 0.3, "induction": 0.35, "greater-than": 0.25, "filler": 0.1},
}


def sample_documents(rng: random.Random, mix: Mapping[str, float], n: int) -> list[str]:
    """``n`` documents drawn from the kinds of ``mix`` in proportion to their weights.

    Example:
        >>> docs = sample_documents(random.Random(0), MIXES["all"], 3)
        >>> len(docs)
        3
    """
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=n)
    return [DOCUMENTS[kind](rng) for kind in kinds]
