"""The safety filter: shape, NaN/inf, joint limits, velocity, clamp mode, workspace, logging and counts."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from envs.config import SafetyConfig
from envs.errors import SafetyViolation
from envs.robot import ACTION_HIGH, ACTION_LOW, HOME_QPOS, JOINT_NAMES
from envs.safety import SafetyFilter

DT = 0.1  # 10 Hz


def make(mode: str = "reject", vmax: float | None = 2.5, **kw) -> SafetyFilter:
    mask = np.r_[np.ones(14, bool), np.zeros(2, bool)]
    return SafetyFilter(ACTION_LOW, ACTION_HIGH, max_joint_velocity=vmax, control_dt=DT, mode=mode,
                        velocity_mask=mask, joint_names=JOINT_NAMES, **kw)


def chunk(h: int = 4) -> np.ndarray:
    return np.repeat(HOME_QPOS[None], h, axis=0)  # (H, 16) a still pose inside the limits


def test_valid_chunk_passes_unchanged_and_is_counted() -> None:
    f = make()
    out = f.check(chunk())
    assert out.dtype == np.float32 and out.shape == (4, 16)
    np.testing.assert_array_equal(out, chunk())
    assert f.counts["passed"] == 1 and f.counts["rejected"] == 0


@pytest.mark.parametrize("bad", [np.zeros(16), np.zeros((3, 15)), np.zeros((0, 16)), np.zeros((2, 3, 16)),
                                 np.array([["a"] * 16])])
@pytest.mark.parametrize("mode", ["reject", "clamp"])
def test_wrong_shape_is_always_rejected(bad: np.ndarray, mode: str) -> None:
    f = make(mode)
    with pytest.raises(SafetyViolation, match="actions must be"):
        f.check(bad)
    assert f.counts["rejected:shape"] == 1


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mode", ["reject", "clamp"])
def test_nonfinite_is_always_rejected(value: float, mode: str) -> None:
    f = make(mode)
    a = chunk()
    a[2, 5] = value
    with pytest.raises(SafetyViolation, match="non-finite target at step 2, left_wrist_pitch"):
        f.check(a)
    assert f.counts["rejected:nonfinite"] == 1


def test_limits_rejected_naming_the_joint() -> None:
    f = make()
    a = chunk()
    a[1, 3] = ACTION_HIGH[3] + 0.1
    with pytest.raises(SafetyViolation, match="left_elbow target .* at step 1 is outside"):
        f.check(a)
    assert f.counts["rejected:limits"] == 1


def test_limits_clamped_in_clamp_mode() -> None:
    f = make("clamp", vmax=None)
    a = chunk()
    a[:, 15] = 1.0  # right gripper far above its 0.045 m range
    a[:, 0] = ACTION_LOW[0] - 1.0
    out = f.check(a)
    assert np.all(out[:, 15] == ACTION_HIGH[15]) and np.all(out[:, 0] == ACTION_LOW[0])
    assert f.counts["clamped:limits"] == 1 and f.counts["rejected"] == 0


def test_velocity_between_consecutive_targets() -> None:
    f = make()
    a = chunk()
    a[2:, 7] += 0.3  # 3 rad/s on right_shoulder_pitch between step 1 and 2
    with pytest.raises(SafetyViolation, match="right_shoulder_pitch moves 0.3000 rad at step 2"):
        f.check(a)
    a = chunk()
    a[2:, 7] += 0.24  # 2.4 rad/s: allowed
    f.check(a)
    assert f.counts["rejected:velocity"] == 1 and f.counts["passed"] == 1


def test_velocity_from_current_position_and_across_chunks() -> None:
    f = make()
    f.reset(current=HOME_QPOS)
    far = chunk(1)
    far[0, 0] -= 0.5
    with pytest.raises(SafetyViolation, match="at step 0"):
        f.check(far)  # 0.5 rad in one period from where the robot is
    near = chunk(1)
    near[0, 0] -= 0.2
    f.check(near)
    with pytest.raises(SafetyViolation, match="at step 0"):
        f.check(chunk(1) + np.r_[np.full(14, 0.1), 0, 0])  # 0.3 rad back from the previous target


def test_grippers_are_not_velocity_limited() -> None:
    f = make()
    f.reset(current=HOME_QPOS)
    a = chunk(2)
    a[1, 14] = 0.0  # close the gripper at once
    f.check(a)
    assert f.counts["passed"] == 1


def test_velocity_clamped_shortens_each_step() -> None:
    f = make("clamp")
    f.reset(current=HOME_QPOS)
    a = chunk(3)
    a[:, 1] = HOME_QPOS[1] + 1.0  # asks for 1 rad at once
    out = f.check(a)
    np.testing.assert_allclose(out[:, 1] - HOME_QPOS[1], [0.25, 0.5, 0.75], atol=1e-5)
    assert np.all(out[:, 2:] == a[:, 2:])
    assert f.counts["clamped:velocity"] == 1


def test_rejection_does_not_move_the_reference() -> None:
    f = make()
    f.reset(current=HOME_QPOS)
    bad = chunk(1)
    bad[0, 0] = np.nan
    with pytest.raises(SafetyViolation):
        f.check(bad)
    step = chunk(1)
    step[0, 0] += 0.25
    f.check(step)  # still measured from HOME_QPOS


def test_workspace_violation_rejected_even_in_clamp_mode() -> None:
    f = make("clamp", workspace=lambda a: a[:, 0] > HOME_QPOS[0] - 0.1)  # a toy workspace on one joint
    a = chunk()
    a[3, 0] = HOME_QPOS[0] - 0.15
    with pytest.raises(SafetyViolation, match="step 3 leaves the workspace"):
        f.check(a)
    assert f.counts["rejected:workspace"] == 1


def test_decisions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    f = make()
    with caplog.at_level(logging.DEBUG, logger="envs.safety"):
        f.check(chunk())
        with pytest.raises(SafetyViolation):
            f.check(chunk() * np.nan)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("passed a chunk of 4" in m for m in msgs)
    assert any("rejected (nonfinite)" in m for m in msgs)


def test_from_config() -> None:
    f = SafetyFilter.from_config(SafetyConfig(mode="clamp", max_joint_velocity=1.0), ACTION_LOW, ACTION_HIGH, DT)
    assert f.mode == "clamp" and f.max_step == pytest.approx(0.1)
    with pytest.raises(ValueError, match="mode"):
        SafetyFilter(ACTION_LOW, ACTION_HIGH, max_joint_velocity=1.0, control_dt=DT, mode="ignore")


@pytest.mark.parametrize("kw", [{"max_joint_velocity": -1.0}, {"max_joint_velocity": float("nan")},
                                {"max_joint_velocity": 0.0}, {"workspace_margin": -0.1},
                                {"workspace_margin": float("inf")}])
def test_safety_config_refuses_limits_that_would_disable_or_invert_the_filter(kw) -> None:
    # a negative velocity limit would make np.clip drive every joint; NaN would switch the check off
    with pytest.raises(ValueError, match=f"backend.safety.{next(iter(kw))}"):
        SafetyConfig(**kw)


def test_safety_filter_refuses_a_nonfinite_velocity_limit_or_period() -> None:
    with pytest.raises(ValueError, match="max_joint_velocity"):
        SafetyFilter(ACTION_LOW, ACTION_HIGH, max_joint_velocity=float("nan"), control_dt=DT)
    with pytest.raises(ValueError, match="control_dt"):
        SafetyFilter(ACTION_LOW, ACTION_HIGH, max_joint_velocity=1.0, control_dt=float("nan"))


@pytest.mark.parametrize("pose", [np.full(16, np.nan), np.zeros(7)])
def test_a_broken_reference_pose_rejects_every_chunk_until_a_valid_reset(pose) -> None:
    f = make()
    f.reset(pose)  # e.g. a robot reporting a NaN encoder: no velocity check could be made
    with pytest.raises(SafetyViolation, match="no valid reference pose"):
        f.check(chunk())
    assert f.counts["rejected:reference"] == 1
    f.reset(HOME_QPOS)
    assert np.array_equal(f.check(chunk()), chunk())
    f.reset(None)  # no pose given at all is a fresh stream, not a broken one
    assert np.array_equal(f.check(chunk()), chunk())


@pytest.mark.parametrize("name", ["control_hz", "physics_dt"])
def test_env_config_refuses_a_nonfinite_rate(name) -> None:
    from envs.config import EnvConfig
    with pytest.raises(ValueError, match=f"env.{name} must be a finite number"):
        EnvConfig(**{name: float("nan")})
