"""Built-in tasks: indirect-object identification, induction and greater-than (here), and
gendered-pronoun resolution and capital recall (:mod:`~circuitgraph.tasks.pronouns`,
:mod:`~circuitgraph.tasks.capitals`), in one registry :data:`TASKS`.

Each task is a seeded generator of :class:`~circuitgraph.tasks.pairs.TextPair` that works with
any tokenizer: the names, numbers and words it substitutes are drawn from those that are single
tokens of it (with a leading space, so GPT-2-style BPE works too), which also makes clean and
corrupt prompts tokenize to the same length; greater-than switches to a digit-by-digit form
where two-digit numbers are not tokens. The zoo's training corpus
(:mod:`circuitgraph.zoo.corpus`) samples from the same templates and lists through the
``sample_*`` functions below, so the tasks and the corpus cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from circuitgraph.errors import ConfigError, DataError
from circuitgraph.tasks.capitals import generate_capitals
from circuitgraph.tasks.checks import require_enough, require_known, require_single, single_tokens
from circuitgraph.tasks.pairs import PromptPairs, TextPair, tokenize_pairs
from circuitgraph.tasks.pronouns import generate_pronoun

__all__ = [
    "GREATER_THAN_DIGIT_TEMPLATES",
    "GREATER_THAN_NOUNS",
    "GREATER_THAN_TEMPLATES",
    "INDUCTION_LENGTHS",
    "INDUCTION_WORDS",
    "IOI_OBJECTS",
    "IOI_PLACES",
    "IOI_TEMPLATES",
    "NAMES",
    "NUMBERS",
    "TASKS",
    "Task",
    "get_task",
    "make_pairs",
    "sample_greater_than",
    "sample_greater_than_digits",
    "sample_induction",
    "sample_ioi",
    "single_tokens",
    "splits_digits",
]

# From the name list of the IOI paper (Wang et al. 2022), all single tokens in GPT-2.
NAMES: tuple[str, ...] = (
    "Aaron", "Adam", "Alan", "Alex", "Alice", "Amy", "Andrew", "Anna", "Arthur", "Brian",
    "Charles", "Daniel", "David", "Edward", "Emily", "Eric", "Frank", "George", "Henry", "Ian",
    "Jack", "Jacob", "James", "Jane", "Jason", "Jennifer", "Jessica", "John", "Joseph", "Kate",
    "Kevin", "Laura", "Lisa", "Luke", "Mark", "Martin", "Mary", "Max", "Michael", "Paul",
    "Peter", "Rachel", "Richard", "Robert", "Rose", "Ryan", "Sarah", "Scott", "Simon", "Thomas",
)  # fmt: skip

# {A} and {B} are the two names of the first clause; {S} repeats the subject. The ABBA
# order puts the indirect object first (A=IO, B=S), BABA the subject (A=S, B=IO).
IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
IOI_PLACES: tuple[str, ...] = (
    "store", "garden", "school", "park", "office", "station", "hospital", "restaurant",
)  # fmt: skip
#: fewest single-token names IOI needs (three per prompt, and variety across prompts)
IOI_MIN_NAMES = 10
IOI_OBJECTS: tuple[str, ...] = (
    "drink", "book", "ring", "bone", "ball", "letter", "bag", "gift",
)  # fmt: skip

# Hanna et al. 2023: "The war lasted from the year 1732 to the year 17". Words are split so
# that a word-level tokenizer sees the century and the two-digit year as separate tokens.
GREATER_THAN_TEMPLATES: tuple[str, ...] = (
    "The {NOUN} lasted from the year {CC} {YY} to the year {CC}",
    "The {NOUN} started in the year {CC} {YY} and ended in the year {CC}",
)
GREATER_THAN_NOUNS: tuple[str, ...] = (
    "war", "expedition", "siege", "project", "campaign", "reign", "journey", "festival",
    "drought", "strike",
)  # fmt: skip
#: the digit-level form, for tokenizers without a token per two-digit number
GREATER_THAN_DIGIT_TEMPLATES: tuple[str, ...] = (
    "The {NOUN} lasted from the year {CC}{YY} to the year {CC}",
    "The {NOUN} started in the year {CC}{YY} and ended in the year {CC}",
)
NUMBERS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(1, 100))
_CENTURIES = tuple(f"{c:02d}" for c in range(11, 20))
_CORRUPT_YEAR = "01"

# Ordinary words for random induction sequences (filtered to this tokenizer's single tokens).
INDUCTION_WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "table", "chair", "window", "bread", "water", "horse",
    "tiger", "lamp", "paper", "glass", "shirt", "field", "forest", "island", "bridge", "road",
    "tree", "flower", "grass", "sand", "snow", "rain", "wind", "fire", "light", "night",
    "morning", "summer", "winter", "coffee", "tea", "milk", "cake", "salt", "sugar", "rice",
    "fish", "bird", "dog", "cat", "mouse", "cow", "sheep", "lion", "bear", "wolf",
    "king", "queen", "doctor", "teacher", "farmer", "artist", "soldier", "student", "child",
    "friend", "city", "village", "country", "market", "church", "castle", "tower", "wall",
    "door", "floor", "roof", "kitchen", "room", "bed", "box", "car", "train", "boat",
    "ship", "plane", "wheel", "engine", "machine", "phone", "camera", "music", "song", "dance",
    "game", "story", "picture", "color", "money", "gold", "silver", "iron", "wood", "metal",
)  # fmt: skip
#: inclusive range of the length of the random sequence that is repeated
INDUCTION_LENGTHS: tuple[int, int] = (8, 16)


@dataclass(frozen=True)
class Task:
    """A built-in prompt-pair distribution.

    ``generate(tokenizer, n, seed)`` returns ``n`` text pairs, the same for the same seed;
    ``models`` names the zoo models trained to do the task.

    Example:
        >>> TASKS["ioi"].metric
        'logit_diff'
    """

    name: str
    description: str
    generate: Callable[[Any, int, int], list[TextPair]]
    models: tuple[str, ...]
    metric: str = "logit_diff"


# --- IOI --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IOIExample:
    """One IOI sentence: the clean prompt, its ABC corruption, and the two names."""

    clean: str
    corrupt: str
    io: str
    subject: str


def sample_ioi(rng: random.Random, names: Sequence[str] = NAMES) -> IOIExample:
    """One IOI prompt from a random template, order (ABBA or BABA), names, place and object.

    The corruption is the standard "ABC" one: the repeated subject S2 is replaced by a third
    name C, so the prompt no longer says who the indirect object is.

    Example:
        >>> ex = sample_ioi(random.Random(0))
        >>> ex.clean.endswith(" to"), ex.io != ex.subject
        (True, True)
    """
    io, subject, third = rng.sample(list(names), 3)
    template = rng.choice(IOI_TEMPLATES)
    place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
    a, b = (io, subject) if rng.random() < 0.5 else (subject, io)
    fill = {"A": a, "B": b, "PLACE": place, "OBJECT": obj}
    return IOIExample(
        clean=template.format(S=subject, **fill),
        corrupt=template.format(S=third, **fill),
        io=io,
        subject=subject,
    )


def _generate_ioi(tokenizer: Any, n: int, seed: int) -> list[TextPair]:
    """IOI pairs: answer the indirect object, wrong the subject; corrupt is ABC (S2 → C).

    Only the names that are single tokens of this tokenizer are drawn (places, objects and
    template words may take several tokens: they are the same in clean and corrupt).
    """
    names = require_enough(tokenizer, NAMES, IOI_MIN_NAMES, "name", "ioi")
    for template in IOI_TEMPLATES:
        require_known(tokenizer, template.format(A="", B="", S="", PLACE="", OBJECT=""), "ioi")
    require_known(tokenizer, " ".join(IOI_PLACES + IOI_OBJECTS), "ioi")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = sample_ioi(rng, names)
        out.append(TextPair(ex.clean, ex.corrupt, f" {ex.io}", f" {ex.subject}"))
    return out


# --- induction --------------------------------------------------------------------------


@dataclass(frozen=True)
class InductionExample:
    """Random words repeated: ``clean`` ends inside the repeat; ``corrupt`` has new first words."""

    clean: tuple[str, ...]
    corrupt: tuple[str, ...]
    answer: str
    wrong: str


def sample_induction(
    rng: random.Random, words: Sequence[str], lengths: tuple[int, int] = INDUCTION_LENGTHS
) -> InductionExample:
    """A random sequence x_1..x_L of distinct words, repeated up to x_k (answer x_{k+1}).

    The corrupt prompt keeps the repeat x_1..x_k but replaces the first half by fresh words
    y_1..y_L in which the current word x_k sits at another position j (y_j = x_k): induction
    on the corrupt prompt predicts y_{j+1}, the wrong answer. Every earlier token's
    predecessor changes, so both the previous-token and the induction heads matter.

    Example:
        >>> ex = sample_induction(random.Random(0), INDUCTION_WORDS)
        >>> len(ex.clean) == len(ex.corrupt), ex.clean[-1] == ex.corrupt[-1]
        (True, True)
    """
    length = rng.randint(*lengths)
    drawn = rng.sample(list(words), 2 * length)
    xs, ys = drawn[:length], drawn[length:]
    k = rng.randint(1, length - 1)  # the prompt ends on x_k; x_{k+1} exists
    j = rng.choice([i for i in range(1, length) if i != k])  # y_j = x_k, y_{j+1} exists
    ys[j - 1] = xs[k - 1]
    return InductionExample(
        clean=tuple(xs + xs[:k]),
        corrupt=tuple(ys + xs[:k]),
        answer=xs[k],
        wrong=ys[j],
    )


def induction_words(tokenizer: Any, words: Sequence[str] = INDUCTION_WORDS) -> list[str]:
    """The words of ``words`` that are single tokens here (enough for a sequence and its twin)."""
    ok, bad = single_tokens(tokenizer, words)
    need = 2 * INDUCTION_LENGTHS[1]
    if len(ok) < need:
        raise DataError(
            f"task 'induction': expected at least {need} single-token words but only {len(ok)} "
            f"of the word list are (not: {bad[:8]}); use a tokenizer with ordinary English words"
        )
    return ok


def _generate_induction(tokenizer: Any, n: int, seed: int) -> list[TextPair]:
    """Induction pairs over the tokenizer's single-token ordinary words."""
    words = induction_words(tokenizer)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = sample_induction(rng, words)
        # A leading space keeps the first word a single BPE token (" apple", not "apple").
        clean, corrupt = (" " + " ".join(words) for words in (ex.clean, ex.corrupt))
        out.append(TextPair(clean, corrupt, f" {ex.answer}", f" {ex.wrong}"))
    return out


# --- greater-than -----------------------------------------------------------------------


@dataclass(frozen=True)
class GreaterThanExample:
    """A start year YY, the prompt asking for an end year, and its "01" corruption."""

    clean: str
    corrupt: str
    start: int
    answer: str
    wrong: str


def sample_greater_than(rng: random.Random) -> GreaterThanExample:
    """A prompt "The war lasted from the year 17 32 to the year 17" with YY in 02..98.

    ``answer`` is a uniformly drawn two-digit year greater than YY and ``wrong`` one smaller
    than YY, so logit_diff > 0 means the model ranks a later year above an earlier one. The
    corrupt prompt has YY = 01 (Hanna et al.), after which every year is plausible.

    Example:
        >>> ex = sample_greater_than(random.Random(0))
        >>> int(ex.wrong) < ex.start < int(ex.answer)
        True
    """
    start = rng.randint(2, 98)
    template = rng.choice(GREATER_THAN_TEMPLATES)
    fill = {"NOUN": rng.choice(GREATER_THAN_NOUNS), "CC": rng.choice(_CENTURIES)}
    return GreaterThanExample(
        clean=template.format(YY=f"{start:02d}", **fill),
        corrupt=template.format(YY=_CORRUPT_YEAR, **fill),
        start=start,
        answer=f"{rng.randint(start + 1, 99):02d}",
        wrong=f"{rng.randint(1, start - 1):02d}",
    )


def sample_greater_than_digits(rng: random.Random) -> GreaterThanExample:
    """The digit-level form: "The war lasted from the year 1732 to the year 17" with YY in
    10..89, for tokenizers that write a number one digit per token.

    The next token is the tens digit of the end year: ``answer`` is a digit above YY's tens
    digit and ``wrong`` one below it (a tens digit equal to YY's can go either way). The
    corrupt prompt has YY = 01.

    Example:
        >>> ex = sample_greater_than_digits(random.Random(0))
        >>> int(ex.wrong) < ex.start // 10 < int(ex.answer)
        True
    """
    start = rng.randint(10, 89)
    tens = start // 10
    template = rng.choice(GREATER_THAN_DIGIT_TEMPLATES)
    fill = {"NOUN": rng.choice(GREATER_THAN_NOUNS), "CC": rng.choice(_CENTURIES)}
    return GreaterThanExample(
        clean=template.format(YY=f"{start:02d}", **fill),
        corrupt=template.format(YY=_CORRUPT_YEAR, **fill),
        start=start,
        answer=str(rng.randint(tens + 1, 9)),
        wrong=str(rng.randint(0, tens - 1)),
    )


def splits_digits(tokenizer: Any) -> bool:
    """Whether this tokenizer writes numbers one token per digit (Llama 3, SmolLM2, Qwen, ...).

    Example:
        >>> from circuitgraph.zoo.tokenizer import build_word_tokenizer
        >>> splits_digits(build_word_tokenizer(["17", "32"]))
        False
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = {d: tokenizer.encode(d, add_special_tokens=False) for d in "0123456789"}
    if any(len(i) != 1 or i[0] == unk for i in ids.values()):
        return False
    return all(
        tokenizer.encode(f" {year}", add_special_tokens=False)[-4:] == [ids[d][0] for d in year]
        for year in ("1732", "1901", "1899")
    )


def _generate_greater_than(tokenizer: Any, n: int, seed: int) -> list[TextPair]:
    """Greater-than pairs: answer a later year, wrong an earlier one; two-digit numbers as
    tokens where the tokenizer has them all, else the digit-level form."""
    whole = not single_tokens(tokenizer, NUMBERS)[1]
    if not whole and not splits_digits(tokenizer):
        require_single(tokenizer, NUMBERS, "two-digit number", "greater-than")
    templates = GREATER_THAN_TEMPLATES if whole else GREATER_THAN_DIGIT_TEMPLATES
    for template in templates:
        require_known(tokenizer, template.format(NOUN="", CC="", YY=""), "greater-than")
    require_known(tokenizer, " ".join(GREATER_THAN_NOUNS), "greater-than")
    sample = sample_greater_than if whole else sample_greater_than_digits
    space = " " if whole else ""  # a digit inside a number has no space before it
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = sample(rng)
        out.append(TextPair(ex.clean, ex.corrupt, space + ex.answer, space + ex.wrong))
    return out


# --- registry ---------------------------------------------------------------------------

_FULL = ("gpt2-4l", "llama-gqa-4l")
_REAL = ("smollm2-135m",)

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "ioi",
            "indirect-object identification: 'When Mary and John went to the store, John gave "
            "a drink to' -> Mary (corrupt: the repeated name replaced by a third)",
            _generate_ioi,
            (*_FULL, *_REAL),
        ),
        Task(
            "induction",
            "repeated random words: '... x_k x_k+1 ... x_k' -> x_k+1 (corrupt: new first half)",
            _generate_induction,
            ("attn-only-2l", *_FULL, *_REAL),
        ),
        Task(
            "greater-than",
            "'The war lasted from the year 17 32 to the year 17' -> a year > 32 over one < 32 "
            "(corrupt: 17 01); digit by digit where two-digit numbers are not single tokens "
            "('... 1732 to the year 17' -> tens digit > 3)",
            _generate_greater_than,
            (*_FULL, *_REAL),
        ),
        Task(
            "gendered-pronoun",
            "'So Mary is a really great friend, isn't' -> she over he (corrupt: a name of the "
            "other gender); needs an English vocabulary",
            generate_pronoun,
            _REAL,
        ),
        Task(
            "capitals",
            "factual recall: 'The capital of France is' -> Paris over the corrupt country's "
            "capital (corrupt: another country); needs an English vocabulary",
            generate_capitals,
            _REAL,
        ),
    )
}


def get_task(name: str | Task) -> Task:
    """Look a built-in task up by name.

    Example:
        >>> get_task("induction").name
        'induction'
    """
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(
            f"expected a task among {sorted(TASKS)} but got {name!r}; pick one of those or "
            "pass a data file"
        ) from None


def make_pairs(
    task: str | Task,
    tokenizer: Any,
    n: int,
    seed: int = 0,
    max_len: int | None = None,
    bos: bool | None = None,
) -> PromptPairs:
    """Generate ``n`` pairs of a built-in task and tokenize them; ``bos`` says whether to
    prepend the BOS token (None: as the tokenizer itself does, see
    :func:`~circuitgraph.tasks.pairs.adds_bos`).

    Example:
        >>> pairs = make_pairs("ioi", model.tokenizer, 64, seed=0)  # doctest: +SKIP
        >>> len(pairs)  # doctest: +SKIP
        64
    """
    task = get_task(task)
    if n < 1:
        raise ConfigError(f"expected at least 1 prompt pair but got n={n}; pass a positive n")
    pairs = task.generate(tokenizer, n, seed)
    return tokenize_pairs(tokenizer, pairs, bos=bos, max_len=max_len, where=f"{task.name} pair")
