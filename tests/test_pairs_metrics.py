"""Padding and metrics: a padded batch gives each pair exactly its unpadded metric."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.errors import ConfigError, DataError, MetricError
from circuitgraph.tasks.metrics import METRICS, answer_logits, check_finite, get_metric
from circuitgraph.tasks.pairs import PromptPairs, TextPair, tokenize_pairs

from .conftest import random_pairs


@pytest.mark.parametrize("name", sorted(METRICS))
def test_padded_batch_equals_each_pair_alone(tiny, name):
    model, _ = tiny
    pairs = random_pairs(6)
    assert len(set(pairs.answer_pos.tolist())) > 1, "pairs must differ in length"
    metric = get_metric(name)
    with torch.no_grad():
        ref = answer_logits(model(pairs.clean), pairs).log_softmax(-1)
        batched = metric(answer_logits(model(pairs.corrupt), pairs), pairs, ref)
        for i in range(len(pairs)):
            one = pairs.select(slice(i, i + 1))
            assert one.seq_len == int(one.answer_pos[0]) + 1  # trailing padding trimmed
            r = answer_logits(model(one.clean), one).log_softmax(-1)
            alone = metric(answer_logits(model(one.corrupt), one), one, r)
            assert float(batched[i]) == pytest.approx(float(alone[0]), abs=1e-5)


def test_metric_values_by_hand():
    pairs = PromptPairs.from_tokens([[1, 2]], [[1, 3]], [4], [5])
    logits = torch.zeros(1, 6)
    logits[0, 4], logits[0, 5] = 2.0, 0.5
    assert float(get_metric("logit_diff")(logits, pairs)) == pytest.approx(1.5)
    p = logits.softmax(-1)[0, 4]
    assert float(get_metric("prob")(logits, pairs)) == pytest.approx(float(p))
    assert float(get_metric("logprob")(logits, pairs)) == pytest.approx(float(p.log()))
    ref = logits.log_softmax(-1)
    assert float(get_metric("kl")(logits, pairs, ref)) == pytest.approx(0.0, abs=1e-7)


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ConfigError, match="logit_diff"):
        get_metric("accuracy")


def test_kl_without_reference_and_nonfinite_values_are_refused():
    pairs = PromptPairs.from_tokens([[1, 2]], [[1, 3]], [4], [5])
    with pytest.raises(MetricError):
        get_metric("kl")(torch.zeros(1, 6), pairs)
    with pytest.raises(MetricError, match="NaN or infinite"):
        check_finite(torch.tensor([1.0, float("nan")]))


def test_tokenize_pairs_checks_lengths_and_single_token_answers(tiny_gpt2):
    model, _ = tiny_gpt2
    tok = model.tokenizer
    good = tokenize_pairs(
        tok, [TextPair("w1 w2 w3", "w1 w9 w3", "w4", "w5"), TextPair("w1", "w2", "w6", "w7")]
    )
    assert good.clean.shape == (2, 4) and good.answer_pos.tolist() == [3, 1]
    assert good.clean[0, 0] == tok.bos_token_id and not good.mask[1, 2:].any()
    with pytest.raises(
        DataError, match="pair 1: expected clean and corrupt of the same token length"
    ):
        tokenize_pairs(tok, [TextPair("w1 w2", "w1", "w4", "w5")])
    with pytest.raises(DataError, match="single token"):
        tokenize_pairs(tok, [TextPair("w1", "w2", "w4 w5", "w5")])
    with pytest.raises(DataError, match="vocabulary"):
        tokenize_pairs(tok, [TextPair("w1", "w2", "zebra", "w5")])
    with pytest.raises(DataError, match="context"):
        tokenize_pairs(tok, [TextPair("w1 " * 40, "w2 " * 40, "w4", "w5")], max_len=32)
    with pytest.raises(DataError, match="none"):
        tokenize_pairs(tok, [])


def test_batches_stream_and_concat():
    pairs = random_pairs(7)
    parts = list(pairs.batches(3))
    assert [len(p) for p in parts] == [3, 3, 1]
    joined = parts[0].concat(parts[1]).concat(parts[2])
    assert torch.equal(joined.answer_pos, pairs.answer_pos)
    with pytest.raises(DataError):
        next(pairs.batches(0))
