"""A word-level tokenizer in Hugging Face format (``AutoTokenizer`` loads it from a folder)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_word_tokenizer(words: Sequence[str], path: str | Path | None = None) -> Any:
    """A word-level tokenizer: ids 0-3 are ``<pad> <unk> <bos> <eos>``, then ``words``; encoding
    with special tokens puts ``<bos>`` first.

    Text is split at whitespace and around punctuation, so ``"store, John"`` is the three
    tokens ``store , John`` (put ``","`` in ``words`` to know it). Saved to ``path``
    (``tokenizer.json`` and friends) when given.

    Example:
        >>> tok = build_word_tokenizer(["the", "cat", "."])
        >>> tok.encode("the cat.", add_special_tokens=False)
        [4, 5, 6]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *dict.fromkeys(words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    # The zoo models are trained on BOS + document, so encoding text adds BOS: the convention
    # that prompt pairs follow by default (circuitgraph.tasks.pairs.adds_bos).
    bos = vocab["<bos>"]
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B:1", special_tokens=[("<bos>", bos)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    if path is not None:
        tok.save_pretrained(str(path))
        _portable_class(Path(path) / "tokenizer_config.json")
    return tok


def _portable_class(config_path: Path) -> None:
    """Name the tokenizer class both transformers 4 and 5 know.

    transformers 5 writes ``TokenizersBackend``, which transformers 4 cannot load; both
    load ``PreTrainedTokenizerFast`` from ``tokenizer.json``.
    """
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
