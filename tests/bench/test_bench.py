"""The benchmark suite: the recall-cost arithmetic by hand, and ``bench --quick`` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from circuitgraph.bench.recall import (
    RecallSetting,
    k_values,
    method_cost,
    recall_curve,
    recall_setting,
    verified_recall_cost,
)
from circuitgraph.bench.speed import fit_linear
from circuitgraph.cli.app import app
from circuitgraph.errors import ConfigError
from circuitgraph.export import read_json
from circuitgraph.nodes import Node
from circuitgraph.scores import NodeScores


def test_verified_recall_cost_on_a_hand_made_ranking():
    truth = ["a", "b", "c", "d", "e", "f"]  # exact order
    ranking = ["c", "x", "a", "y", "b", "d", "e", "f"]
    assert verified_recall_cost(ranking, truth, 1) == 3  # a is third
    assert verified_recall_cost(ranking, truth, 2) == 5  # then b, fifth
    assert verified_recall_cost(ranking, truth, 3) == 5  # c came first
    assert verified_recall_cost(ranking, truth, 6) == 8
    assert verified_recall_cost(truth, truth, 4) == 4  # a perfect ranking verifies exactly k
    with pytest.raises(ConfigError):
        verified_recall_cost(["a"], ["z"], 1)


def test_cost_adds_backwards_at_two_forwards_and_the_curve_counts_recall():
    s = NodeScores((Node("mlp", 0),), torch.zeros(1), torch.zeros(1), "atp*", "logit_diff", 1,
                   forward_passes=2.0, backward_passes=3.0)  # fmt: skip
    assert method_cost(s) == 8.0
    assert recall_curve(["c", "a", "b"], ["a", "b", "c"], 2) == [0.0, 0.0, 0.5, 1.0]
    assert k_values(50) == {"1": 1, "5": 5, "10": 10, "1%": 1}
    assert k_values(3) == {"1": 1, "5": 3, "10": 3, "1%": 1}
    assert fit_linear([1, 2, 4], [3, 5, 9])["slope"] == pytest.approx(2.0)


def test_recall_setting_on_a_tiny_model(tiny_gpt2, pairs):
    model, info = tiny_gpt2
    r = recall_setting(model, info, pairs, RecallSetting("tiny", "random", "heads", random_seeds=2))
    n = r["nodes"]
    assert r["exhaustive_cost"] == n + 2
    for m, got in r["methods"].items():
        for label, k in r["k"].items():
            # never fewer than k verifications, never more than every node
            assert got["own_cost"] + k <= got["cost"][label] <= got["own_cost"] + n, m
    assert r["methods"]["atp"]["own_cost"] == 4.0  # 2 forward + 1 backward
    assert r["methods"]["random"]["own_cost"] == 0.0


def test_bench_quick_writes_json_with_finite_ratios(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {"config", "machine", "recall", "speed", "memory", "scaling", "peer", "seconds"} <= set(
        data
    )
    assert data["recall"] and set(data["recall"][0]["methods"]) >= {"atp", "atp*", "random"}
    ratios = [v for s in data["speed"].values() for v in s["ratios"].values()]
    ratios += [m["ratio"] for m in data["memory"].values()]
    ratios += [p["speedup"] for p in data["peer"].values()]
    assert ratios and all(math.isfinite(x) and x > 0 for x in ratios)
    assert all(p["max_rel_diff"] < 1e-3 for p in data["peer"].values())
    assert "Cost of verified recall" in result.output


def test_bench_runs_only_the_parts_asked_for_and_reports_them():
    from dataclasses import replace

    from circuitgraph.bench import BenchConfig, run_bench
    from circuitgraph.bench.report import plots, table

    config = replace(BenchConfig.quick(), models=("random:tiny-gpt2",), parts=("speed",), repeats=1)
    results = run_bench(config)
    assert "speed" in results and not {"recall", "memory", "scaling", "peer"} & set(results)
    assert results["machine"]["device"] == "cpu"
    text = table(results)
    assert "Speed and memory ratios" in text and "Cost of verified recall" not in text
    assert plots(results) == {}
    with pytest.raises(ConfigError, match="bench parts"):
        run_bench(replace(config, parts=("speed", "colour")))


def test_gpu_preset_names_shapes_that_exist():
    from circuitgraph.bench import BenchConfig
    from circuitgraph.bench.common import SHAPES

    config = BenchConfig.gpu("cuda:1")
    assert config.device == "cuda:1" and config.parts == ("speed", "memory")
    assert all(m.split(":", 1)[1] in SHAPES for m in config.models)


@pytest.mark.parametrize(
    ("device", "message"),
    [("toaster", "expected a torch device"), ("cuda", "no CUDA device")],
)
def test_bench_device_mistakes_are_one_line_errors(tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(app, ["bench", "--device", device, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert message in str(result.exception) or message in result.output


def test_a_memory_only_run_still_prints_its_ratios():
    from circuitgraph.bench.report import table

    results = {
        "machine": {"cpu": "x", "cores": 2, "threads": 1, "torch": "t", "python": "p"},
        "memory": {"random:tiny-gpt2": {"batch": [4, 16], "ratio": 2.5}},
        "seconds": {"total": 1.0},
    }
    row = next(ln for ln in table(results).splitlines() if ln.startswith("random:tiny-gpt2"))
    assert row.split()[-1] == "2.50!" and row.split()[1] == "4x16"


def test_gpu_preset_runs_the_7b_shape_at_two_batches():
    from circuitgraph.bench import BenchConfig
    from circuitgraph.bench.common import SHAPES

    config = BenchConfig.gpu("cuda:0")
    assert "random:llama-7b" in config.models and config.batches == ((8, 64), (32, 256))
    big = SHAPES["llama-7b"]
    assert (big["n_layer"], big["n_embd"], big["n_head"], big["n_kv"]) == (32, 4096, 32, 8)
    assert big["on_device"] == "bfloat16"


def test_a_shape_built_on_the_device_is_the_same_in_every_process():
    """The 7B shape is never saved: it is built from its config on the device, seeded. The
    same route on a tiny shape (on the CPU) gives the same model twice and runs."""
    from circuitgraph.bench.common import hf_passes, random_model, random_pairs

    a, info = random_model("tiny-llama", seed=3, on_device="float32")
    b, _ = random_model("tiny-llama", seed=3, on_device="float32")
    pairs = random_pairs(info.d_vocab, 2, 6)
    with torch.no_grad():
        assert torch.equal(a(pairs.clean), b(pairs.clean))
        assert torch.allclose(a(pairs.clean), a.original_model(input_ids=pairs.clean).logits)
    hf_passes(a, pairs, 1)()  # the plain-HF passes the bridge is compared with


def test_batches_key_the_speed_results_by_batch():
    from dataclasses import replace

    from circuitgraph.bench import BenchConfig, run_bench
    from circuitgraph.bench.report import table

    config = replace(
        BenchConfig.quick(), models=("random:tiny-gpt2",), parts=("speed",), repeats=1,
        batches=((2, 6), (3, 8)),
    )  # fmt: skip
    results = run_bench(config)
    assert set(results["speed"]) == {"random:tiny-gpt2@2x6", "random:tiny-gpt2@3x8"}
    assert all(r["ratios"]["bridge"] > 0 for r in results["speed"].values())
    rows = [ln for ln in table(results).splitlines() if ln.startswith("random:tiny-gpt2")]
    assert [r.split()[1] for r in rows] == ["2x6", "3x8"]


def test_bench_real_measures_the_screen_against_exact_patching_on_any_model(tmp_path):
    # The real part on a zoo model (SmolLM2 needs a 93 MB package): every number is there,
    # recall is out of the exact top-10, and the sweep costs one pass per node plus two.
    args = ["bench", "--real", "--models", "zoo:gpt2-4l", "--real-tasks", "ioi",
            "--real-pairs", "4", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    real = json.loads((tmp_path / "bench.json").read_text())["real"]
    ioi = real["tasks"]["ioi"]
    assert real["model"] == "zoo:gpt2-4l" and ioi["pairs"] == 4
    for kind, n in (("heads", 64), ("neurons", 512)):
        x = ioi[kind]
        assert x["nodes"] == n and len(x["exact_top10"]) == 10
        for method in ("atp", "atp*"):
            row = x[method]
            assert 0 <= row["top10"] <= row["top20"] <= 10 and row["sweep"] == n + 2
            # the method's own passes (a few) plus 10..n nodes verified in its order
            assert 10 < row["cost"] <= n + 50
    assert ioi["edges"]["edges"] > 0 and -1 <= ioi["edges"]["eap"]["spearman"] <= 1
    c = ioi["circuit"]
    assert c["edges"] > 0 and math.isfinite(c["faithfulness"]) and c["target"] == 0.8
    assert "graph" not in c and c["search"]  # the circuit is a file of its own
    assert (
        "real model zoo:gpt2-4l" in result.output and "| ioi | head/q/k/v | 64 |" in result.output
    )
    G = read_json(tmp_path / "circuit-ioi.json")
    assert G.graph["n_edges"] == c["edges"] and G.graph["search"]["evaluations"] == c["search"]
    assert (tmp_path / "faithfulness-ioi.png").read_bytes()[:4] == b"\x89PNG"
