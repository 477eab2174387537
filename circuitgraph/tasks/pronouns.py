"""Gendered-pronoun resolution (Mathwin et al. 2023, "Identifying a preliminary circuit for
predicting gendered pronouns in GPT-2 small").

"So Mary is a really great friend, isn't" -> " she" over " he"; the corrupt prompt names
someone of the other gender, which flips the answer. The names come from the IOI list.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from circuitgraph.tasks.checks import ENGLISH, require_enough, require_known, require_single
from circuitgraph.tasks.pairs import TextPair

__all__ = [
    "FEMALE_NAMES",
    "MALE_NAMES",
    "PRONOUN_ROLES",
    "PRONOUN_TEMPLATES",
    "PronounExample",
    "generate_pronoun",
    "sample_pronoun",
]

# The IOI names (tasks.builtin.NAMES) by the gender they usually carry; Alex and Max left out.
FEMALE_NAMES: tuple[str, ...] = (
    "Alice", "Amy", "Anna", "Emily", "Jane", "Jennifer", "Jessica", "Kate", "Laura", "Lisa",
    "Mary", "Rachel", "Rose", "Sarah",
)  # fmt: skip
MALE_NAMES: tuple[str, ...] = (
    "Aaron", "Adam", "Alan", "Andrew", "Arthur", "Brian", "Charles", "Daniel", "David",
    "Edward", "Eric", "Frank", "George", "Henry", "Ian", "Jack", "Jacob", "James", "Jason",
    "John", "Joseph", "Kevin", "Luke", "Mark", "Martin", "Michael", "Paul", "Peter", "Richard",
    "Robert", "Ryan", "Scott", "Simon", "Thomas",
)  # fmt: skip
# The name never starts the prompt, so it is a " Name" token like the answer-side names.
PRONOUN_TEMPLATES: tuple[str, ...] = (
    "So {NAME} is a really great {ROLE}, isn't",
    "Well, {NAME} is such a good {ROLE}, isn't",
    "So {NAME} really is a great {ROLE}, isn't",
    "I think {NAME} is a very kind {ROLE}, isn't",
)
PRONOUN_ROLES: tuple[str, ...] = (
    "friend", "teacher", "neighbour", "doctor", "student", "writer", "singer", "player",
)  # fmt: skip
_PRONOUN = {"female": "she", "male": "he"}
_MIN_NAMES = 4  # per gender


@dataclass(frozen=True)
class PronounExample:
    """One prompt about a person, its twin about someone of the other gender, the pronouns."""

    clean: str
    corrupt: str
    answer: str
    wrong: str


def sample_pronoun(
    rng: random.Random,
    female: tuple[str, ...] | list[str] = FEMALE_NAMES,
    male: tuple[str, ...] | list[str] = MALE_NAMES,
) -> PronounExample:
    """A random template, role and gender (half each), a name of that gender for the clean
    prompt and one of the other for the corrupt prompt.

    Example:
        >>> ex = sample_pronoun(random.Random(0))
        >>> ex.clean.endswith("isn't"), {ex.answer, ex.wrong} == {"she", "he"}
        (True, True)
    """
    template, role = rng.choice(PRONOUN_TEMPLATES), rng.choice(PRONOUN_ROLES)
    names = {"female": rng.choice(list(female)), "male": rng.choice(list(male))}
    gender = rng.choice(("female", "male"))
    other = "male" if gender == "female" else "female"
    return PronounExample(
        clean=template.format(NAME=names[gender], ROLE=role),
        corrupt=template.format(NAME=names[other], ROLE=role),
        answer=_PRONOUN[gender],
        wrong=_PRONOUN[other],
    )


def generate_pronoun(tokenizer: Any, n: int, seed: int) -> list[TextPair]:
    """Gendered-pronoun pairs over the names that are single tokens of this tokenizer."""
    task = "gendered-pronoun"
    require_single(tokenizer, list(_PRONOUN.values()), "pronoun", task, ENGLISH)
    female = require_enough(tokenizer, FEMALE_NAMES, _MIN_NAMES, "female name", task, ENGLISH)
    male = require_enough(tokenizer, MALE_NAMES, _MIN_NAMES, "male name", task, ENGLISH)
    for template in PRONOUN_TEMPLATES:
        require_known(tokenizer, template.format(NAME="", ROLE=""), task)
    require_known(tokenizer, " ".join(PRONOUN_ROLES), task)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = sample_pronoun(rng, female, male)
        out.append(TextPair(ex.clean, ex.corrupt, f" {ex.answer}", f" {ex.wrong}"))
    return out
