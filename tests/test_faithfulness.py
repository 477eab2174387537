"""MIB's integrated faithfulness scores: the definition by hand, MIB's area formula, the grid,
the rankings, and the measured curves against separate circuit runs."""

from __future__ import annotations

import numpy as np
import pytest

from circuitgraph.errors import ConfigError
from circuitgraph.faithfulness import (
    MIB_FRACTIONS,
    MIBScores,
    area,
    check_fractions,
    cmd,
    cpr,
    edge_counts,
    gap_warning,
    mib_scores,
    model_edges,
    ranked_edges,
)
from circuitgraph.model import ModelInfo
from circuitgraph.nodes import Edge

from .conftest import random_pairs


def test_cpr_and_cmd_of_a_hand_computed_curve():
    # fractions 0.001, 0.01, 0.1, 1 and F = 0, 0.5, 1, 1:
    #   CPR = 0.009·(0 + 0.5)/2 + 0.09·(0.5 + 1)/2 + 0.9·(1 + 1)/2 = 0.00225 + 0.0675 + 0.9
    #   CMD = 0.009·(1 + 0.5)/2 + 0.09·(0.5 + 0)/2 + 0.9·0          = 0.00675 + 0.0225
    x, f = [0.001, 0.01, 0.1, 1.0], [0.0, 0.5, 1.0, 1.0]
    assert cpr(x, f) == pytest.approx(0.96975, abs=1e-12)
    assert cmd(x, f) == pytest.approx(0.02925, abs=1e-12)
    # overshooting 1 costs CMD as much as falling short: |1 - 1.5| = |1 - 0.5|
    assert cmd(x, [0.0, 1.5, 1.0, 1.0]) == pytest.approx(cmd(x, f), abs=1e-12)
    assert cpr(x, [0.0, 1.5, 1.0, 1.0]) > cpr(x, f)
    # a perfect curve: CPR is the axis' width (not normalised), CMD 0
    assert cpr(MIB_FRACTIONS, [1.0] * 10) == pytest.approx(0.999)
    assert cmd(MIB_FRACTIONS, [1.0] * 10) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_areas_match_mibs_formula(seed):
    """MIB's evaluate_area_under_curve (linear axis, its default): for consecutive grid
    points, area_under += (x2 − x1)·(f1 + f2)/2 and area_from_1 += (x2 − x1)·(|1 − f1| +
    |1 − f2|)/2, over its percentages. The reference here is numpy's trapezoid rule, and
    MIB's normalised print_results variant (x / x_max) coincides because the grid ends at 1."""
    rng = np.random.default_rng(seed)
    f = np.cumsum(rng.normal(0.15, 0.3, size=len(MIB_FRACTIONS)))
    x = np.asarray(MIB_FRACTIONS)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    assert cpr(MIB_FRACTIONS, f.tolist()) == pytest.approx(float(trapezoid(f, x)), abs=1e-12)
    assert cmd(MIB_FRACTIONS, f.tolist()) == pytest.approx(
        float(trapezoid(np.abs(1 - f), x)), abs=1e-12
    )
    assert cpr(MIB_FRACTIONS, f.tolist()) == pytest.approx(
        float(trapezoid(f, x / x[-1])), abs=1e-12
    )


def test_grid_sizes_and_edge_count_match_mib_for_gpt2_small():
    # MIB's EDGE_COUNTS["gpt2"] is 32491; its circuit at fraction p has int(p · N) edges
    info = ModelInfo("gpt2", 12, 12, 12, 768, 64, 3072, "LN", False, True, False, 50257, 1024)
    n = len(model_edges(info))
    assert n == 32491
    assert edge_counts(n) == [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]


def test_fractions_are_checked():
    assert check_fractions([0.5, 1]) == (0.5, 1.0)
    for bad in ([1.0], [0.5, 0.2], [0.0, 1.0], [0.5, 1.5]):
        with pytest.raises(ConfigError, match="increasing edge fractions"):
            check_fractions(bad)
    with pytest.raises(ConfigError, match="one value per fraction"):
        area([0.1, 1.0], [1.0])


def test_rankings_put_unscored_edges_where_a_zero_score_sorts():
    a, b, c, d = (Edge.parse(x) for x in ("input->logits", "input->m0", "m0->logits", "input->m1"))
    rows = [(b, 0.5, 0.5), (c, -2.0, 2.0)]
    everything = [a, b, c, d]
    assert ranked_edges(rows, everything, "score") == [c, b, a, d]
    # direction −1 (L_clean > L_corrupt): patching c lowers L by 2, so c carries the behaviour
    assert ranked_edges(rows, everything, "signed", -1.0) == [c, a, d, b]
    assert ranked_edges(rows, everything, "signed", +1.0) == [b, a, d, c]
    with pytest.raises(ConfigError, match="edges of this model"):
        ranked_edges([(Edge.parse("m5->logits"), 1.0, 1.0)], everything)


def test_gap_warning_is_relative_to_the_metric_size():
    assert gap_warning(3.0, -2.0) is None
    assert gap_warning(0.02, 0.0) is None  # small numbers, but the gap is all of them
    assert "small" in (gap_warning(10.0, 9.5) or "")  # 5% of the metric's size
    assert "small" in (gap_warning(0.0, 0.0) or "")
    assert "small" in (gap_warning(float("nan"), 1.0) or "")


def test_mib_scores_measure_each_prefix_of_each_ranking(tiny_gpt2):
    """Every point of both curves is F of the right prefix, measured by a separate circuit run;
    the empty and the full circuit are 0 and 1 without a run (and are so when run)."""
    from circuitgraph.attribution import attribute_edges
    from circuitgraph.patching import evaluate_circuit

    model, info = tiny_gpt2
    pairs = random_pairs(4)
    scores = attribute_edges(model, pairs, "logit_diff", "eap")
    everything = model_edges(info)
    grid = (0.1, 0.4, 1.0)
    found, curve = mib_scores(model, pairs, scores, "logit_diff", grid, extra_sizes=[3])
    n = len(everything)
    assert found.n_edges == n and found.n_scored == len(scores)
    assert found.sizes == tuple(int(p * n) for p in grid)
    ev = evaluate_circuit(model, pairs, [])
    direction = 1.0 if ev.metric_corrupt > ev.metric_clean else -1.0
    by_score = ranked_edges(scores, everything, "score")
    by_signed = ranked_edges(scores, everything, "signed", direction)
    for size, f_abs, f_signed in zip(found.sizes, found.cmd_curve, found.cpr_curve, strict=True):
        assert f_abs == pytest.approx(
            evaluate_circuit(model, pairs, by_score[:size]).faithfulness, abs=1e-9
        )
        assert f_signed == pytest.approx(
            evaluate_circuit(model, pairs, by_signed[:size]).faithfulness, abs=1e-9
        )
    assert evaluate_circuit(model, pairs, everything).faithfulness == pytest.approx(1.0, abs=1e-5)
    assert dict(curve)[3] == pytest.approx(
        evaluate_circuit(model, pairs, by_score[:3]).faithfulness, abs=1e-9
    )
    assert found.cpr == cpr(grid, found.cpr_curve) and found.cmd == cmd(grid, found.cmd_curve)
    assert MIBScores(**{k: found.to_json()[k] for k in ("n_edges", "n_scored")},
                     fractions=grid, sizes=found.sizes, cpr_curve=found.cpr_curve,
                     cmd_curve=found.cmd_curve) == found  # fmt: skip
