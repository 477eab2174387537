"""Random-subset diagnostics: the bound covers the largest hidden effect of an additive model
at least as often as its confidence says."""

from __future__ import annotations

import pytest
import torch

from circuitgraph.attribution import attribute_nodes, diagnose
from circuitgraph.attribution.diagnostics import CAVEAT, subset_effects, t_quantile
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import patch_sets

SEEDS = 50


@pytest.fixture(scope="module")
def hidden(additive):
    """The additive model's per-position value nodes, the top 5 (by exact effect) taken out."""
    model, info, pairs = additive
    nodes = enumerate_nodes(info, ["v"], per_position=True, seq_len=pairs.seq_len)
    truth = attribute_nodes(model, pairs, method="exact", nodes=nodes)
    verified = set(truth.top_k(5))
    rest = [n for n in nodes if n not in verified]
    return model, pairs, rest, truth.subset(rest)


def test_the_model_is_additive(hidden):
    model, pairs, rest, truth = hidden
    s = rest[::3]
    joint = patch_sets(model, pairs, [s])[0]
    assert float(joint) == pytest.approx(float(truth.subset(s).signed.sum()), abs=1e-4)
    assert truth.score.max() > 1.0


def test_bound_covers_the_largest_hidden_effect_in_the_stated_share_of_seeds(hidden):
    model, pairs, rest, truth = hidden
    largest = float(truth.score.max())
    diagnoses = [diagnose(model, pairs, rest, n_subsets=100, seed=s) for s in range(SEEDS)]
    covered = sum(d.bound >= largest for d in diagnoses)
    assert covered >= 0.95 * SEEDS  # observed: 50 of 50 (Bonferroni over 43 nodes is conservative)
    median = sorted(d.bound for d in diagnoses)[SEEDS // 2]
    assert median < 3 * largest, "the bound should be informative, not just valid"
    d = diagnoses[0]
    assert d.confidence == 0.95 and d.forward_passes == 102 and d.caveat == CAVEAT
    assert "additive" in d.summary() and rest[0].id in d.table(k=len(rest))


def test_subset_estimates_are_unbiased_for_additive_effects():
    # Exactly additive effects and balanced subsets (every pair of nodes in and out equally
    # often): the estimate is exact.
    c = torch.tensor([3.0, -1.0, 0.5, 0.0])
    masks = torch.tensor(
        [[a, b, x, y] for a in (0, 1) for b in (0, 1) for x in (0, 1) for y in (0, 1)]
    ).bool()
    est, se, df = subset_effects(masks, (masks.double() * c).sum(1))
    assert torch.allclose(est, c.double())
    assert (se > 0).all() and (df >= 1).all()


def test_t_quantiles():
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-5)
    assert t_quantile(0.995, 5) == pytest.approx(4.032143, abs=1e-5)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-4)
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(1 - 1e-9, 20) > t_quantile(1 - 1e-6, 20) > 4


def test_bad_arguments_are_config_errors(hidden):
    model, pairs, rest, _ = hidden
    with pytest.raises(ConfigError, match="probability"):
        diagnose(model, pairs, rest, p=1.5)
    with pytest.raises(ConfigError, match="subsets"):
        diagnose(model, pairs, rest, n_subsets=2)
    with pytest.raises(ConfigError, match="unverified"):
        diagnose(model, pairs, [])
