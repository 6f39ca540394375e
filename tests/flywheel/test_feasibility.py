"""Kinematic feasibility: limits, derivatives and self-collision on a small constructed robot."""
from __future__ import annotations

import time

import numpy as np
import pytest

from flywheel.errors import FlywheelError
from flywheel.evaluation.feasibility import FeasibilityChecker, FeasibilityLimits

# Two one-link arms on a base, in one plane. At 0 they point away from each other; turned by pi each
# reaches across the middle and the two capsules overlap. A table (not robot) touches the base.
TWO_ARMS = """
<mujoco>
  <compiler angle="radian"/>
  <worldbody>
    <geom name="table" type="box" pos="0 0 -0.35" size="1 1 0.05"/>
    <body name="base" pos="0 0 0">
      <geom type="box" size="0.1 0.1 0.3" pos="0 0 -0.05"/>
      <body name="left" pos="-0.3 0 0.4">
        <joint name="l1" type="hinge" axis="0 0 1" range="-3.2 3.2"/>
        <geom type="capsule" fromto="0 0 0 -0.5 0 0" size="0.04"/>
      </body>
      <body name="right" pos="0.3 0 0.4">
        <joint name="r1" type="hinge" axis="0 0 1" range="-3.2 3.2"/>
        <geom type="capsule" fromto="0 0 0 0.5 0 0" size="0.04"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position joint="l1" ctrlrange="-3.2 3.2"/>
    <position joint="r1" ctrlrange="-3.2 3.2"/>
  </actuator>
</mujoco>
"""


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    path = tmp_path_factory.mktemp("robot") / "two_arms.xml"
    path.write_text(TWO_ARMS)
    return FeasibilityChecker(path, ["l1", "r1"], FeasibilityLimits(dt=0.1, max_velocity=40.0,
                                                                     max_acceleration=1e4, max_jerk=1e6))


def test_feasible_sequence_scores_one(checker):
    actions = np.stack([np.linspace(0, 0.5, 8), np.linspace(0, -0.5, 8)], axis=1)
    report = checker.check(actions)
    assert report.ok and report.score == 1.0 and report.n_steps == 8


def test_joint_limit_violation_is_flagged(checker):
    actions = np.zeros((4, 2))
    actions[2, 1] = 3.5  # beyond the 3.2 range of r1
    report = checker.check(actions)
    kinds = {(v.t, v.joint, v.kind) for v in report.violations}
    assert (2, "r1", "joint_limit") in kinds
    assert report.score == pytest.approx(0.75)


def test_self_collision_is_flagged_and_table_is_not(checker):
    actions = np.array([[0.0, 0.0], [np.pi, np.pi], [0.0, 0.0]])
    report = checker.check(actions)
    hits = [v for v in report.violations if v.kind == "self_collision"]
    assert [v.t for v in hits] == [1]
    assert hits[0].joint == "left|right" and hits[0].value > 0
    assert report.score == pytest.approx(2 / 3)


def test_velocity_acceleration_and_jerk_limits(tmp_path):
    path = tmp_path / "r.xml"
    path.write_text(TWO_ARMS)
    strict = FeasibilityChecker(path, ["l1", "r1"], FeasibilityLimits(dt=0.1, max_velocity=2.0,
                                                                      max_acceleration=30.0, max_jerk=500.0))
    actions = np.zeros((6, 2))
    actions[3:, 0] = 0.5  # a 0.5 rad jump in one step: 5 rad/s, 50 rad/s^2, 500+ rad/s^3
    kinds = {(v.t, v.kind) for v in strict.check(actions).violations if v.joint == "l1"}
    assert (3, "velocity") in kinds and (3, "acceleration") in kinds and (4, "acceleration") in kinds
    # q0 makes the first step's velocity count too
    report = strict.check(np.full((3, 2), 0.5), q0=np.zeros(4))
    assert any(v.t == 0 and v.kind == "velocity" for v in report.violations)


def test_nonfinite_and_unknown_joint(checker, tmp_path):
    actions = np.zeros((3, 2))
    actions[1, 0] = np.nan
    assert any(v.kind == "nonfinite" and v.t == 1 for v in checker.check(actions).violations)
    path = tmp_path / "r.xml"
    path.write_text(TWO_ARMS)
    with pytest.raises(FlywheelError, match="nope"):
        FeasibilityChecker(path, ["l1", "nope"])


def test_fast_enough_for_best_of_8(checker):
    cands = np.random.default_rng(0).uniform(-1, 1, size=(8, 8, 2))
    t = time.perf_counter()
    reports = checker.check_many(cands)
    assert len(reports) == 8 and all(0.0 <= r.score <= 1.0 for r in reports)
    assert time.perf_counter() - t < 0.5


def test_real_robot_home_is_feasible_and_crossed_arms_collide():
    from envs.robot import HOME_QPOS, JOINT_NAMES

    checker = FeasibilityChecker()  # envs.robot.ROBOT_XML / JOINT_NAMES / HOME_QPOS
    assert checker.check(np.repeat(HOME_QPOS[None], 8, axis=0), q0=HOME_QPOS).score == 1.0
    crossed = np.array([-1.88, -0.8, 1.61, -0.65, -1.7, -2.06, 1.3, -1.84, 0.9, -0.01, -0.46, 2.14, -1.48, 0.33,
                        0.02, 0.01])  # fmt: skip
    report = checker.check(np.stack([HOME_QPOS, crossed, HOME_QPOS]))
    assert any(v.t == 1 and v.kind == "self_collision" and "left_upper_arm|right_upper_arm" == v.joint
               for v in report.violations)  # fmt: skip
    bent = HOME_QPOS.copy()
    bent[JOINT_NAMES.index("left_elbow")] = 0.5  # the elbow range is [-2.6, 0]
    assert (0, "left_elbow", "joint_limit") in {(v.t, v.joint, v.kind) for v in checker.check(bent[None]).violations}
