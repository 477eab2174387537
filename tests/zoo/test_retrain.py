"""Retraining a zoo model from its committed seed reproduces its card (slow: minutes)."""

from __future__ import annotations

import json

import pytest

from circuitgraph.train import main
from circuitgraph.zoo import model_path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attn-only-2l", "gpt2-4l", "llama-gqa-4l"])
def test_retraining_reproduces_the_card(tmp_path, name):
    card = json.loads((model_path(name) / "zoo.json").read_text())
    args = ["--model", name, "--seed", str(card["seed"]), "--threads", str(card["threads"])]
    fresh = main([*args, "--out", str(tmp_path)])
    assert fresh["steps"] == card["steps"] and fresh["d_vocab"] == card["d_vocab"]
    for task, expected in card["metrics"].items():
        got = fresh["metrics"][task]
        assert got["accuracy"] >= 0.95
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=0.02)
        assert got["mean_logit_diff"] == pytest.approx(expected["mean_logit_diff"], rel=0.1)
    assert fresh["final_loss"] == pytest.approx(card["final_loss"], rel=0.02)
