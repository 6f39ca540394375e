"""DTW (dtaidistance C) against a plain reference, joint-range normalisation, per-joint MSE, baseline."""
from __future__ import annotations

import numpy as np
import pytest

from flywheel.evaluation.dtw import (
    dtw_distance,
    hold_baseline,
    normalise_joints,
    per_joint_mse,
    reference_dtw,
)


@pytest.mark.parametrize("seed", range(5))
def test_dtw_equals_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(int(rng.integers(2, 12)), 3))
    b = rng.normal(size=(int(rng.integers(2, 12)), 3))
    assert dtw_distance(a, b) == pytest.approx(reference_dtw(a.tolist(), b.tolist()), rel=1e-9)


def test_dtw_normalises_each_joint_by_its_range():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(8, 2))
    low, high = np.array([-1.0, 0.0]), np.array([1.0, 10.0])  # ranges 2 and 10
    expected = reference_dtw((a / [2.0, 10.0]).tolist(), (b / [2.0, 10.0]).tolist())
    assert dtw_distance(a, b, low, high) == pytest.approx(expected, rel=1e-9)
    assert normalise_joints(high[None], low, high).tolist() == [[1.0, 1.0]]


def test_dtw_is_zero_for_time_warped_copy_and_positive_otherwise():
    a = np.linspace(0, 1, 10)[:, None].repeat(2, axis=1)
    warped = np.repeat(a, 2, axis=0)  # same path, half speed
    assert dtw_distance(a, warped) == pytest.approx(0.0, abs=1e-12)
    assert dtw_distance(a, warped + 0.1) > 0.1


def test_per_joint_mse_and_hold_baseline():
    true = np.array([[0.0, 1.0], [2.0, 1.0]])
    pred = np.array([[1.0, 1.0], [2.0, 3.0]])
    assert per_joint_mse(true, pred).tolist() == [0.5, 2.0]
    base = hold_baseline(np.array([0.3, 0.4, 9.0, 9.0]), 3, 2)
    assert base.shape == (3, 2) and np.all(base == [0.3, 0.4])
    with pytest.raises(ValueError):
        per_joint_mse(true, pred[:1])
