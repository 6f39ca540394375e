"""Evaluation statistics against hand-computed values."""
from __future__ import annotations

import math

import pytest

from flywheel.evaluation.stats import (
    paired_promotion_test,
    pairwise_ranking_accuracy,
    pearson_r,
    wilson_interval,
)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-3)


def test_paired_test_promotes_only_beyond_noise():
    champ = [False] * 20
    chall = [True] * 8 + [False] * 12  # 8 discordant wins, 0 losses: p = 0.5**8
    t = paired_promotion_test(chall, champ, alpha=0.05)
    assert t.challenger_only == 8 and t.champion_only == 0
    assert t.p_value == pytest.approx(0.5**8) and t.better
    # 2 wins vs 1 loss is noise
    t2 = paired_promotion_test([True, True, False, True], [False, False, True, True], alpha=0.1)
    assert t2.p_value == pytest.approx(0.5) and not t2.better
    # a worse challenger is never better
    assert not paired_promotion_test(champ, chall).better
    assert "McNemar" in t.reason()
    with pytest.raises(ValueError):
        paired_promotion_test([True], [True, False])


def test_pearson_and_ranking():
    assert pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    acc, pairs = pairwise_ranking_accuracy([0.1, 0.5, 0.4], [0.1, 0.6, 0.5], min_gap=0.15)
    assert pairs == 2 and acc == 1.0  # (0,1) and (0,2); (1,2) gap 0.1 is ignored
    acc, pairs = pairwise_ranking_accuracy([0.9, 0.1], [0.1, 0.9])
    assert pairs == 1 and acc == 0.0


def test_ranking_ties_within_tolerance_count_half():
    # a constant evaluator with rounding noise must not look like a perfect ranker
    acc, pairs = pairwise_ranking_accuracy([0.662, 0.6619, 0.661], [1.0, 0.5, 0.0], tie_tol=0.01)
    assert pairs == 3 and acc == 0.5
    acc, _ = pairwise_ranking_accuracy([0.662, 0.6619, 0.661], [1.0, 0.5, 0.0])
    assert acc == 1.0  # without the tolerance the noise decides
