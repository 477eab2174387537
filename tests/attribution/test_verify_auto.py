"""Verification that knows when to stop, on models: a planted node that AtP scores 0 is found
at the stated confidence across seeds, a model with nothing hidden stops early, and what
is reported (passes against the sweep, the bound in the gap's units) is what was done."""

from __future__ import annotations

import json

import pytest
import torch

from circuitgraph.attribution import attribute_nodes, diagnose, diagnose_until, verify_nodes
from circuitgraph.attribution.diagnostics import metric_gap
from circuitgraph.attribution.verify import verify_auto
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.tasks.metrics import answer_logits, get_metric

from .planted import PLANTED, planted_model

FAST, ALL = range(5), range(20)


def _auto(seed: int, hidden: bool):
    model, info, pairs, _ = planted_model(seed, hidden=hidden)
    nodes = enumerate_nodes(info, ["neuron"])
    screen = attribute_nodes(model, pairs, method="atp", nodes=nodes)
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    found = verify_auto(model, pairs, screen, top_k=5, seed=seed, groups="none")
    return found, truth, screen


def _held(v, truth) -> bool:
    """The claim, checked against the exact sweep: no unverified node reaches τ."""
    if v.stopped != "bounded":
        return True  # nothing was claimed
    rest = [n for n in truth.nodes if n not in set(v.nodes)]
    return max(truth[n][1] for n in rest) < v.threshold


def _planted(seeds) -> tuple[int, int, int]:
    found = held = 0
    for seed in seeds:
        v, truth, screen = _auto(seed, hidden=True)
        assert screen[PLANTED] == (0.0, 0.0), "AtP must be blind to the planted node"
        assert PLANTED in truth.top_k(5), "the planted node must be among the true top 5"
        found += PLANTED in v.nodes
        held += _held(v, truth)
        assert v.forward_passes <= v.exhaustive_passes
    return found, held, len(seeds)


def test_the_planted_node_is_found():
    found, held, n = _planted(FAST)
    assert found == n and held == n


@pytest.mark.slow
def test_the_planted_node_is_found_across_twenty_seeds():
    found, held, n = _planted(ALL)
    assert found >= 0.95 * n and held >= 0.95 * n
    # measured: found 20 of 20, claim held 20 of 20, median 103 passes of the sweep's 194


def _nothing_hidden(seeds) -> tuple[list[float], int, float]:
    passes, top = [], 0
    exhaustive = 0.0
    for seed in seeds:
        v, truth, _ = _auto(seed, hidden=False)
        passes.append(v.forward_passes)
        top += set(truth.top_k(5)) <= set(v.nodes)
        exhaustive = v.exhaustive_passes or 0.0
    return sorted(passes), top, exhaustive


def test_nothing_hidden_stops_early():
    passes, top, exhaustive = _nothing_hidden(FAST)
    assert top == len(FAST)
    assert passes[len(passes) // 2] < 0.5 * exhaustive  # measured: median 88 of 194


@pytest.mark.slow
def test_nothing_hidden_stops_early_across_twenty_seeds():
    passes, top, exhaustive = _nothing_hidden(ALL)
    assert top >= 0.95 * len(ALL)  # measured: 20 of 20
    assert passes[len(passes) // 2] < 0.6 * exhaustive  # measured: median 89 of 194


def test_verify_nodes_auto_reports_what_it_did():
    model, info, pairs, _ = planted_model(0)
    nodes = enumerate_nodes(info, ["neuron"])
    screen = attribute_nodes(model, pairs, method="atp", nodes=nodes)
    v = verify_nodes(model, pairs, screen, "auto", top_k=5, seed=0)
    assert v.asked == "top 5" and v.exhaustive_passes == len(nodes) + 2
    assert v.diagnosis is not None and len(v.diagnosis.nodes) == len(nodes) - len(v.nodes)
    ranks = [r["rank"] for r in v.rows()]
    assert ranks[:5] == [1, 2, 3, 4, 5] and max(ranks) > 5  # then where the bound pointed
    text = v.summary()
    assert "exhaustive sweep costs 194" in text and "additive" in text
    blob = json.loads(json.dumps(v.to_json()))
    assert blob["verified"][0]["node"] == v.nodes[0].id
    assert blob["diagnosis"]["bound"] == pytest.approx(v.diagnosis.bound)
    by_min = verify_nodes(model, pairs, screen, "auto", min_effect=0.5 * v.threshold)
    assert by_min.asked.startswith("|effect| >=") and by_min.threshold == 0.5 * v.threshold
    with pytest.raises(ConfigError, match="top_k"):
        verify_nodes(model, pairs, screen, "auto", top_k=0)
    with pytest.raises(ConfigError, match="'auto'"):
        verify_nodes(model, pairs, screen, "all")


def test_metric_gap_is_clean_minus_corrupt(additive):
    model, _, pairs = additive
    m = get_metric("logit_diff")
    with torch.no_grad():
        want = (
            m(answer_logits(model(pairs.clean), pairs), pairs)
            - m(answer_logits(model(pairs.corrupt), pairs), pairs)
        ).mean()
    assert metric_gap(model, pairs, "logit_diff", batch_size=3) == pytest.approx(float(want))


def test_diagnose_until_reaches_the_target_and_says_so_in_the_gaps_units(additive):
    model, info, pairs = additive
    nodes = enumerate_nodes(info, ["v"], per_position=True, seq_len=pairs.seq_len)
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    rest = [n for n in nodes if n not in set(truth.top_k(5))]
    gap = metric_gap(model, pairs)
    largest = float(truth.subset(rest).score.max())
    target = 2 * largest / abs(gap)
    d = diagnose_until(model, pairs, rest, bound_target=target, groups="none", budget=400, seed=1)
    assert d.stopped == "bounded" and d.bound <= target * abs(gap)
    assert d.bound >= largest  # it covers the largest hidden effect
    assert d.relative_bound == pytest.approx(d.bound / abs(gap))
    assert d.forward_passes == d.n_subsets + 2 * d.meta["rounds"] + 2  # + the gap's 2 runs
    assert f"{d.relative_bound:.3g} x the clean - corrupt gap" in d.summary()
    short = diagnose_until(
        model, pairs, rest, bound_target=0.5 * largest / abs(gap), gap=gap, budget=30, seed=1
    )
    assert short.stopped in ("budget", "blocked") and short.bound > short.target
    assert "was not reached" in short.summary()


def test_the_screen_as_control_variate_tightens_the_fixed_design_bound(additive):
    # The model is linear in every per-position value: AtP is exact, so with the screen as
    # control variate the subsets have nothing left to estimate.
    model, info, pairs = additive
    nodes = enumerate_nodes(info, ["v"], per_position=True, seq_len=pairs.seq_len)
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    screen = attribute_nodes(model, pairs, method="atp", nodes=nodes)
    rest = [n for n in nodes if n not in set(truth.top_k(5))]
    largest = float(truth.subset(rest).score.max())
    plain = diagnose(model, pairs, rest, n_subsets=50, seed=0)
    cv = diagnose(model, pairs, rest, n_subsets=50, seed=0, screen=screen)
    assert cv.bound == pytest.approx(largest, rel=1e-6) and cv.beta == pytest.approx(1.0)
    assert plain.bound > 1.2 * largest
    assert "control variate" in cv.summary()


def test_a_fixed_draw_says_what_a_target_would_cost(additive):
    model, info, pairs = additive
    nodes = enumerate_nodes(info, ["v"], per_position=True, seq_len=pairs.seq_len)
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    rest = [n for n in nodes if n not in set(truth.top_k(5))]
    largest = float(truth.subset(rest).score.max())
    gap = metric_gap(model, pairs)
    d = diagnose(model, pairs, rest, n_subsets=40, seed=0, bound_target=1.3 * largest / abs(gap))
    assert d.gap == pytest.approx(gap) and d.forward_passes == 40 + 2 + 2
    need = d.passes_for(d.target)
    assert need is not None and need > 40 and "a fresh draw of about" in d.summary()
    # a draw of that size does reach the target (the extrapolation is not optimistic)
    again = diagnose(model, pairs, rest, n_subsets=int(need) - 2, seed=1, gap=gap)
    assert again.bound <= d.target
    assert d.passes_for(0.5 * largest) is None  # a node is itself above: verify it first
