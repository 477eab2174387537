"""Factual recall: the capital of a country ("The capital of France is" -> " Paris").

The corrupt prompt names another country, whose capital is the wrong answer, so the metric
compares the two facts the model must look up (Meng et al. 2022 and Geva et al. 2023 locate
such recall in early MLPs and in attention that moves the subject's attributes to the end).
Clean and corrupt countries take the same number of tokens, so the pair stays aligned.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from circuitgraph.errors import DataError
from circuitgraph.tasks.checks import ENGLISH, one_token, require_known
from circuitgraph.tasks.pairs import TextPair

__all__ = [
    "CAPITALS",
    "CAPITAL_TEMPLATES",
    "CapitalExample",
    "generate_capitals",
    "sample_capital",
]

# Countries with a one-word capital that is unambiguous in English text.
CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Russia", "Moscow"), ("China", "Beijing"), ("England", "London"),
    ("Egypt", "Cairo"), ("Greece", "Athens"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
    ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Kenya", "Nairobi"), ("Thailand", "Bangkok"), ("Peru", "Lima"), ("Cuba", "Havana"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Hungary", "Budapest"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("Chile", "Santiago"), ("Korea", "Seoul"), ("Vietnam", "Hanoi"), ("Scotland", "Edinburgh"),
    ("Wales", "Cardiff"), ("Ukraine", "Kyiv"), ("Venezuela", "Caracas"), ("Morocco", "Rabat"),
    ("Switzerland", "Bern"), ("Netherlands", "Amsterdam"), ("Philippines", "Manila"),
    ("Indonesia", "Jakarta"), ("Pakistan", "Islamabad"), ("Argentina", "Buenos"),
)  # fmt: skip
# The country never starts the prompt, so it is tokenized as it is inside a sentence.
CAPITAL_TEMPLATES: tuple[str, ...] = (
    "The capital of {COUNTRY} is",
    "The capital city of {COUNTRY} is",
    "The capital of the country {COUNTRY} is",
    "The city that is the capital of {COUNTRY} is",
)
_MIN_COUNTRIES = 8


@dataclass(frozen=True)
class CapitalExample:
    """A prompt about one country, its twin about another, and their capitals."""

    clean: str
    corrupt: str
    answer: str
    wrong: str


def sample_capital(
    rng: random.Random, groups: list[list[tuple[str, str]]] | None = None
) -> CapitalExample:
    """Two different countries from one group (by default all of :data:`CAPITALS`); a
    tokenizer's generator groups them by token count so that clean and corrupt align.

    Example:
        >>> ex = sample_capital(random.Random(0))
        >>> ex.clean.startswith("The "), ex.answer != ex.wrong
        (True, True)
    """
    groups = groups or [list(CAPITALS)]
    group = rng.choice([g for g in groups if len(g) > 1])
    (country, capital), (other, other_capital) = rng.sample(group, 2)
    template = rng.choice(CAPITAL_TEMPLATES)
    return CapitalExample(
        clean=template.format(COUNTRY=country),
        corrupt=template.format(COUNTRY=other),
        answer=capital,
        wrong=other_capital,
    )


def _groups(tokenizer: Any) -> list[list[tuple[str, str]]]:
    """The usable countries (single-token capital), grouped by the country's token count."""
    by_length: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for country, capital in CAPITALS:
        if one_token(tokenizer, capital):
            by_length[len(tokenizer.encode(f" {country}", add_special_tokens=False))].append(
                (country, capital)
            )
    return [g for _, g in sorted(by_length.items()) if len(g) > 1]


def generate_capitals(tokenizer: Any, n: int, seed: int) -> list[TextPair]:
    """Capital-recall pairs over the countries whose capital is a single token here."""
    groups = _groups(tokenizer)
    usable = sum(len(g) for g in groups)
    if usable < _MIN_COUNTRIES:
        raise DataError(
            f"task 'capitals': expected at least {_MIN_COUNTRIES} countries whose capital is a "
            f"single token of this tokenizer but {usable} of {len(CAPITALS)} are; {ENGLISH}"
        )
    for template in CAPITAL_TEMPLATES:
        require_known(tokenizer, template.format(COUNTRY=""), "capitals")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = sample_capital(rng, groups)
        out.append(TextPair(ex.clean, ex.corrupt, f" {ex.answer}", f" {ex.wrong}"))
    return out
