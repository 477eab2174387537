"""The prompt-pair batch type and turning text pairs into it.

Pairs are right-padded. In a causal model a padded position can never influence an earlier
one, so every pair's metric, read at its own answer position, is exactly what the model
gives the unpadded prompt: no attention mask is needed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from circuitgraph.errors import CircuitGraphWarning, DataError

__all__ = ["PromptPairs", "TextPair", "adds_bos", "check_pairs", "resolve_bos", "tokenize_pairs"]


@dataclass(frozen=True)
class TextPair:
    """One prompt pair as text: the clean prompt, its corrupt twin, the answer and a wrong answer."""

    clean: str
    corrupt: str
    answer: str
    wrong: str


@dataclass(frozen=True)
class PromptPairs:
    """A batch of tokenized prompt pairs.

    ``clean[i]`` and ``corrupt[i]`` have the same length; pair ``i``'s metric is read from
    the logits at ``answer_pos[i]`` (the last real token), comparing ``answer[i]`` with
    ``wrong[i]``. ``mask`` is True on real tokens.

    Example:
        >>> import torch
        >>> p = PromptPairs.from_tokens([[2, 5, 6]], [[2, 7, 6]], [8], [9])
        >>> len(p), p.answer_pos.tolist()
        (1, [2])
    """

    clean: Int[Tensor, "n t"]
    corrupt: Int[Tensor, "n t"]
    answer: Int[Tensor, " n"]
    wrong: Int[Tensor, " n"]
    answer_pos: Int[Tensor, " n"]
    mask: Bool[Tensor, "n t"]

    def __post_init__(self) -> None:
        n, t = self.clean.shape
        if self.corrupt.shape != (n, t) or self.mask.shape != (n, t):
            raise DataError(
                f"expected clean, corrupt and mask of one shape but got {tuple(self.clean.shape)}, "
                f"{tuple(self.corrupt.shape)} and {tuple(self.mask.shape)}"
            )
        for name in ("answer", "wrong", "answer_pos"):
            if getattr(self, name).shape != (n,):
                raise DataError(
                    f"expected {name} of shape ({n},) but got {getattr(self, name).shape}"
                )

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean.shape[1])

    @property
    def device(self) -> torch.device:
        return self.clean.device

    @classmethod
    def from_tokens(
        cls,
        clean: Sequence[Sequence[int]],
        corrupt: Sequence[Sequence[int]],
        answer: Sequence[int],
        wrong: Sequence[int],
        pad_id: int = 0,
    ) -> PromptPairs:
        """Build a batch from token-id lists (each pair's clean and corrupt of equal length)."""
        if not clean:
            raise DataError("expected at least one prompt pair but got none; check the data")
        lengths = [len(c) for c in clean]
        for i, (c, n) in enumerate(zip(clean, corrupt, strict=True)):
            if len(c) != len(n):
                raise DataError(
                    f"pair {i}: expected clean and corrupt of the same token length but got "
                    f"{len(c)} and {len(n)}; make the corrupt prompt differ only in same-length "
                    "substitutions"
                )
        t = max(lengths)
        clean_t = torch.full((len(clean), t), pad_id, dtype=torch.long)
        corrupt_t = torch.full_like(clean_t, pad_id)
        mask = torch.zeros(len(clean), t, dtype=torch.bool)
        for i, (c, n) in enumerate(zip(clean, corrupt, strict=True)):
            clean_t[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            corrupt_t[i, : len(n)] = torch.tensor(n, dtype=torch.long)
            mask[i, : len(c)] = True
        return cls(
            clean=clean_t,
            corrupt=corrupt_t,
            answer=torch.tensor(list(answer), dtype=torch.long),
            wrong=torch.tensor(list(wrong), dtype=torch.long),
            answer_pos=torch.tensor([n - 1 for n in lengths], dtype=torch.long),
            mask=mask,
        )

    def to(self, device: torch.device | str) -> PromptPairs:
        return PromptPairs(*(getattr(self, f).to(device) for f in _FIELDS))

    def select(self, index: slice | Tensor) -> PromptPairs:
        """A sub-batch, with trailing all-padding columns trimmed."""
        sub = PromptPairs(*(getattr(self, f)[index] for f in _FIELDS))
        t = int(sub.answer_pos.max().item()) + 1 if len(sub) else 0
        return replace(
            sub, clean=sub.clean[:, :t], corrupt=sub.corrupt[:, :t], mask=sub.mask[:, :t]
        )

    def batches(self, batch_size: int) -> Iterator[PromptPairs]:
        """Stream the pairs in batches of at most ``batch_size``."""
        if batch_size < 1:
            raise DataError(f"expected a batch size of at least 1 but got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.select(slice(start, start + batch_size))

    def swapped(self) -> PromptPairs:
        """Clean and corrupt exchanged (denoising patches clean values into the corrupt run)."""
        return replace(self, clean=self.corrupt, corrupt=self.clean)

    def concat(self, other: PromptPairs, pad_id: int = 0) -> PromptPairs:
        """Both batches in one, padded to the longer length."""
        t = max(self.seq_len, other.seq_len)
        parts = [_pad_to(p, t, pad_id) for p in (self, other)]
        return PromptPairs(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("clean", "corrupt", "answer", "wrong", "answer_pos", "mask")


def _pad_to(p: PromptPairs, t: int, pad_id: int) -> PromptPairs:
    extra = t - p.seq_len
    if extra == 0:
        return p
    pad = torch.full((len(p), extra), pad_id, dtype=p.clean.dtype, device=p.device)
    return replace(
        p,
        clean=torch.cat([p.clean, pad], 1),
        corrupt=torch.cat([p.corrupt, pad], 1),
        mask=torch.cat([p.mask, torch.zeros_like(pad, dtype=torch.bool)], 1),
    )


def _single_token(tokenizer: Any, text: str, what: str, where: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise DataError(
            f"{where}: expected the {what} {text!r} to be a single token but it is {len(ids)} "
            f"tokens {ids}; choose a single-token {what} (with GPT-2-style tokenizers, "
            "include the leading space)"
        )
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk and text.strip() != getattr(tokenizer, "unk_token", None):
        raise DataError(f"{where}: the {what} {text!r} is not in the tokenizer's vocabulary")
    return int(ids[0])


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own convention puts its BOS token first when it encodes text
    (Llama and Gemma tokenizers do; GPT-2's, Qwen's and SmolLM2's do not).

    Example:
        >>> from circuitgraph.zoo.tokenizer import build_word_tokenizer
        >>> adds_bos(build_word_tokenizer(["a"]))  # the zoo's word-level tokenizer does
        True
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = list(tokenizer.encode("a", add_special_tokens=True))
    return len(ids) > len(tokenizer.encode("a", add_special_tokens=False)) and ids[0] == bos


def resolve_bos(tokenizer: Any, bos: bool | None) -> bool:
    """Whether prompts get a BOS token: ``bos`` when given, else the tokenizer's convention.

    Example:
        >>> from circuitgraph.zoo.tokenizer import build_word_tokenizer
        >>> resolve_bos(build_word_tokenizer(["a"]), False)
        False
    """
    if bos is None:
        return adds_bos(tokenizer)
    if bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise DataError(
            "expected a tokenizer with a BOS token to prepend (--bos) but this one has none; "
            "use --no-bos or leave the choice to the tokenizer"
        )
    return bool(bos)


def tokenize_pairs(
    tokenizer: Any,
    pairs: Sequence[TextPair],
    bos: bool | None = None,
    max_len: int | None = None,
    where: str = "pair",
    labels: Sequence[str] | None = None,
) -> PromptPairs:
    """Tokenize text pairs into a right-padded :class:`PromptPairs` batch.

    ``bos``: prepend the tokenizer's BOS token to every prompt (True), never (False), or as
    the tokenizer itself does when it encodes text (None, see :func:`adds_bos`).

    Raises a :class:`DataError` naming the pair when clean and corrupt tokenize to different
    lengths, when an answer is not one token, or when a prompt is longer than ``max_len``.
    Pair ``i`` is named ``f"{where} {i + 1}"``, or ``labels[i]`` when given (a file's
    reader passes ``"FILE line N"``).

    Example:
        >>> batch = tokenize_pairs(model.tokenizer, [TextPair("a b", "a c", "d", "e")])  # doctest: +SKIP
    """
    if not pairs:
        raise DataError("expected at least one prompt pair but got none; check the data")
    bos_id = tokenizer.bos_token_id if resolve_bos(tokenizer, bos) else None
    clean, corrupt, answer, wrong = [], [], [], []
    if labels is not None and len(labels) != len(pairs):
        raise DataError(f"expected one label per pair but got {len(labels)} for {len(pairs)} pairs")
    for i, pair in enumerate(pairs):
        label = f"{where} {i + 1}" if labels is None else labels[i]
        c = list(tokenizer.encode(pair.clean, add_special_tokens=False))
        n = list(tokenizer.encode(pair.corrupt, add_special_tokens=False))
        if bos_id is not None:
            c, n = [bos_id, *c], [bos_id, *n]
        if len(c) != len(n):
            raise DataError(
                f"{label}: expected clean and corrupt of the same token length but got {len(c)} "
                f"and {len(n)} tokens; make the corrupt prompt differ by same-length substitutions"
            )
        if not c:
            raise DataError(f"{label}: the clean prompt is empty")
        if max_len is not None and len(c) > max_len:
            raise DataError(
                f"{label}: the prompt is {len(c)} tokens but the model's context is {max_len}; "
                "shorten the prompt"
            )
        clean.append(c)
        corrupt.append(n)
        answer.append(_single_token(tokenizer, pair.answer, "answer", label))
        wrong.append(_single_token(tokenizer, pair.wrong, "wrong answer", label))
    pad = getattr(tokenizer, "pad_token_id", None)
    return PromptPairs.from_tokens(clean, corrupt, answer, wrong, pad_id=0 if pad is None else pad)


def check_pairs(pairs: PromptPairs, d_vocab: int | None = None, compares_wrong: bool = True) -> int:
    """Refuse degenerate prompt pairs before any model work; returns how many pairs have
    identical clean and corrupt prompts.

    Refused (a :class:`DataError`): a token id outside ``[0, d_vocab)``; a pair whose answer
    equals its wrong answer when the metric compares them (``logit_diff`` would be 0 for it
    whatever the model does); every pair's clean prompt equal to its corrupt one (every
    effect would be 0). Some identical pairs are only warned about
    (:class:`~circuitgraph.errors.CircuitGraphWarning`): they add zeros to every mean.

    Example:
        >>> check_pairs(PromptPairs.from_tokens([[2, 5], [2, 6]], [[2, 7], [2, 6]], [8, 8], [9, 9]), 10)
        1
    """
    if d_vocab is not None:
        _check_vocab(pairs, d_vocab)
    n = len(pairs)
    if compares_wrong:
        same = (pairs.answer == pairs.wrong).nonzero().flatten().tolist()
        if same:
            raise DataError(
                f"expected the answer and the wrong answer to differ but they are the same token "
                f"in {len(same)} of {n} pairs (pair {_numbers(same)}); the logit difference is 0 "
                "there whatever the model does, so fix the 'wrong' field"
            )
    differs = ((pairs.clean != pairs.corrupt) & pairs.mask).any(-1)
    identical = (~differs).nonzero().flatten().tolist()
    if len(identical) == n:
        raise DataError(
            f"expected clean and corrupt prompts that differ but all {n} pairs are identical; "
            "every effect would be 0, so give each corrupt prompt a substituted token"
        )
    if identical:
        warnings.warn(
            f"{len(identical)} of {n} pairs have identical clean and corrupt prompts (pair "
            f"{_numbers(identical)}); they add zeros to every mean, so remove them",
            CircuitGraphWarning,
            stacklevel=2,
        )
    return len(identical)


def _check_vocab(pairs: PromptPairs, d_vocab: int) -> None:
    for name in ("clean", "corrupt", "answer", "wrong"):
        ids = getattr(pairs, name)
        inside = (ids >= 0) & (ids < d_vocab)
        if ids.dim() == 2:  # padding is not the model's business
            inside = (inside | ~pairs.mask).all(-1)
        if not bool(inside.all()):
            i = int((~inside).nonzero()[0, 0])
            row = ids[i][pairs.mask[i]] if ids.dim() == 2 else ids[i : i + 1]
            value = int(row[(row < 0) | (row >= d_vocab)][0])
            raise DataError(
                f"pair {i + 1}: expected {name} token ids in [0, {d_vocab}) (the model's "
                f"vocabulary) but got {value}; tokenize the pairs with the model's own tokenizer"
            )


def _numbers(index: list[int], shown: int = 5) -> str:
    """1-based pair numbers, the first few of them: '2, 5, 7 and 3 more'."""
    head = ", ".join(str(i + 1) for i in index[:shown])
    return head if len(index) <= shown else f"{head} and {len(index) - shown} more"
