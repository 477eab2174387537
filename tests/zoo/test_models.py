"""Every zoo model does its tasks, recomputed from the committed weights, as its card says."""

from __future__ import annotations

import json
import re

import pytest

from circuitgraph.train import SPECS
from circuitgraph.zoo import list_models, model_path
from circuitgraph.zoo.evaluate import evaluate

from .conftest import zoo_model

ZOO = sorted(SPECS)
CASES = [(name, task) for name in ZOO for task in SPECS[name].tasks]


def _card(name: str) -> dict:
    return json.loads((model_path(name) / "zoo.json").read_text())


def test_every_spec_is_bundled_and_small():
    models = {m.name: m for m in list_models()}
    assert sorted(models) == ZOO
    for name, m in models.items():
        assert m.tasks == SPECS[name].tasks
    assert sum(m.size_mb for m in models.values()) <= 25


@pytest.mark.parametrize(("name", "task"), CASES)
def test_task_accuracy_matches_card(name, task):
    model, _ = zoo_model(name)
    card = _card(name)
    accuracy, mean_diff = evaluate(model, model.tokenizer, task, card["eval_n"], card["eval_seed"])
    assert accuracy >= 0.95, f"{name} on {task}: {accuracy:.3f}"
    expected = card["metrics"][task]
    assert accuracy == pytest.approx(expected["accuracy"], abs=0.005)
    assert mean_diff == pytest.approx(expected["mean_logit_diff"], rel=1e-3, abs=1e-3)
    readme = (model_path(name) / "README.md").read_text()
    row = re.search(rf"^\| {re.escape(task)} \| ([\d.]+) \| ([-\d.]+) \|$", readme, re.M)
    assert row is not None, f"no {task} row in {name}'s README.md"
    assert float(row[1]) == pytest.approx(accuracy, abs=0.0015)
    assert float(row[2]) == pytest.approx(mean_diff, abs=0.0015)


@pytest.mark.parametrize("name", ZOO)
def test_model_facts_match_card(name):
    _, info = zoo_model(name)
    card = _card(name)
    assert (info.n_layers, info.d_model, info.n_heads, info.n_kv_heads, info.d_vocab, info.n_ctx) == (
        card["n_layers"], card["d_model"], card["n_heads"], card["n_kv_heads"], card["d_vocab"],
        card["n_ctx"],
    )  # fmt: skip
    assert info.attn_only == (card["architecture"] == "attn-only")


def test_architectures():
    _, gpt2 = zoo_model("gpt2-4l")
    _, llama = zoo_model("llama-gqa-4l")
    assert gpt2.norm == "LN" and not gpt2.rotary and not gpt2.gated_mlp
    assert llama.norm == "RMS" and llama.rotary and llama.gated_mlp and llama.grouped_query
