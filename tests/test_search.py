"""The target search along a ranking: the smallest prefix reaching F, in few evaluations."""

from __future__ import annotations

import math
import random

import pytest

from circuitgraph.errors import ConfigError
from circuitgraph.search import Search, check_target, search_prefix


class Counted:
    """F of each prefix from a table, counting the circuits evaluated."""

    def __init__(self, f):
        self.f, self.calls, self.runs = f, 0, 0

    def __call__(self, ks):
        self.calls += 1
        self.runs += len(ks)
        return [self.f(k) for k in ks]


@pytest.mark.parametrize("seed", range(20))
def test_the_smallest_prefix_of_a_rising_curve_is_found_in_logarithmic_evaluations(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 3000)
    steps = sorted(rng.random() * 1.2 for _ in range(n))  # F(k) = k-th value: non-decreasing
    f = Counted(lambda k: steps[k - 1])
    found = search_prefix(n, lambda k: k, f, 0.8, max_edges=n)
    want = next((k for k in range(1, n + 1) if steps[k - 1] >= 0.8), None)
    if want is None:
        assert not found.reached and found.prefix == n  # the best F seen: the last rung
    else:
        assert found.reached and found.prefix == want
    assert found.chosen == (found.prefix, found.prefix, steps[found.prefix - 1])
    assert f.runs <= 2 * max(1, math.ceil(math.log2(n))) + 1


def test_max_edges_bounds_every_circuit_evaluated():
    f = Counted(lambda k: k / 100)
    found = search_prefix(500, lambda k: 3 * k + 2, f, 0.9, max_edges=200)
    assert all(n <= 200 for _, n, _ in found.evaluations)
    assert found.prefix == 66 and not found.reached  # 3*66+2 = 200: the longest that fits
    assert found.chosen[1] == 200
    assert "No circuit of at most 200 edges reached faithfulness >= 0.9" in found.summary()
    assert "F = 0.660" in found.summary() and "--max-edges" in found.summary()
    assert not found.exhausted and (found.n_ranked, found.fits) == (500, 66)
    short = search_prefix(10, lambda k: k, Counted(lambda k: 0.1), 0.9, max_edges=200)
    assert short.exhausted and short.summary().startswith(
        "No circuit among the 10 ranked edges reached faithfulness >= 0.9"
    )


def test_a_curve_that_dips_still_ends_on_a_prefix_that_reaches_the_target():
    values = {k: (0.9 if k in (3, 4) or k >= 40 else 0.1) for k in range(1, 101)}
    found = search_prefix(100, lambda k: k, Counted(values.__getitem__), 0.8, 100)
    assert found.reached and values[found.prefix] >= 0.8
    assert found.prefix == 3  # the ladder's rung 4 reaches it; bisection finds 3 below it


def test_nothing_to_search_gives_an_empty_result():
    found = search_prefix(0, lambda k: k, Counted(lambda k: 1.0), 0.8, 10)
    assert found.prefix == 0 and not found.reached and found.evaluations == ()
    assert "no circuit fits" in found.summary()
    big = search_prefix(10, lambda k: 50 + k, Counted(lambda k: 1.0), 0.8, 10)
    assert big.prefix == 0 and not big.reached


def test_the_record_is_plain_json():
    s = Search(0.8, 100, 4, ((1, 2, 0.3), (4, 6, 0.85)))
    j = s.to_json()
    assert j["reached"] and j["n_edges"] == 6 and j["prefix"] == 4
    assert j["evaluations"] == [[1, 2, 0.3], [4, 6, 0.85]]
    assert j["summary"].startswith("The smallest circuit found with faithfulness >= 0.8 has 6")
    assert Search(0.8, 10, 0, ()).to_json()["faithfulness"] is None


@pytest.mark.parametrize(
    ("target", "max_edges", "match"),
    [(0.0, 5, "target > 0"), (float("nan"), 5, "target > 0"), (math.inf, 5, "finite"),
     (True, 5, "target > 0"), (0.8, 0, "max_edges"), (0.8, 2.5, "max_edges")],
)  # fmt: skip
def test_bad_targets_are_refused_in_one_sentence(target, max_edges, match):
    with pytest.raises(ConfigError, match=match):
        check_target(target, max_edges)
