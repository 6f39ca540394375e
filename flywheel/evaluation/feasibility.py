"""Kinematic feasibility of an action sequence (T, A) of joint-position targets.

Checks, per step: finite values, joint limits, joint velocity / acceleration / jerk limits (finite
differences at the control rate), and self-collision with MuJoCo kinematics of the robot model:
each target is set as the joint positions, `mj_kinematics` + `mj_collision` run, and robot-robot
contacts are counted. Only the robot's own collision geoms collide in the checker's copy of the model
(everything else, and the MJCF's own "robot never hits itself" bits, switched off). Adjacent links
are never counted: parent/child or siblings in the tree of collision-bearing bodies (geom-less joint
bodies skipped, so forearm|hand through a wrist is adjacent; so are the two fingers of a hand, but not
two arms off the torso), and body
pairs already touching in the rest pose are treated as designed-in and ignored.

score = fraction of steps with no violation, in [0, 1]. A checker loads the model once; scoring 8
candidates of 8 steps is a few hundred microseconds of MuJoCo per candidate on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from flywheel.errors import FlywheelError


@dataclass
class FeasibilityLimits:
    """Limits in native units; each may be a scalar or one value per joint."""

    dt: float = 0.1  # seconds between actions (1 / env.control_hz)
    max_velocity: float | list[float] = 2.5  # rad/s, as the safety filter's default
    max_acceleration: float | list[float] = 25.0  # rad/s^2
    max_jerk: float | list[float] = 500.0  # rad/s^3
    limit_tolerance: float = 1e-4  # slack on joint limits
    penetration_tolerance: float = 0.01  # contacts shallower than this (m) are not collisions (crude geoms)


class Violation(NamedTuple):
    """One violation: step t, joint name (or "body1|body2" for a collision), kind, offending value."""

    t: int
    joint: str
    kind: str  # nonfinite | joint_limit | velocity | acceleration | jerk | self_collision
    value: float


@dataclass
class FeasibilityReport:
    """score in [0, 1] (fraction of violation-free steps) and every violation found."""

    score: float
    violations: list[Violation] = field(default_factory=list)
    n_steps: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.violations:
            out[v.kind] = out.get(v.kind, 0) + 1
        return out


class FeasibilityChecker:
    """Scores action sequences against one robot model.

    xml_path / joint_names default to `envs.robot.ROBOT_XML` / `JOINT_NAMES`. Joint limits come from the
    model's joint ranges (or the driving actuator's ctrlrange for unlimited joints) unless `low`/`high`
    are given. Joints not in `joint_names` stay at `rest_qpos` (default: `envs.robot.HOME_QPOS` for the
    default robot, else the model's qpos0); geom pairs touching in that pose are ignored.
    """

    def __init__(
        self,
        xml_path: str | Path | None = None,
        joint_names: list[str] | None = None,
        limits: FeasibilityLimits | None = None,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
        rest_qpos: np.ndarray | None = None,
    ) -> None:
        import mujoco

        if xml_path is None or joint_names is None:
            from envs import robot

            xml_path = robot.ROBOT_XML if xml_path is None else xml_path
            joint_names = list(robot.JOINT_NAMES) if joint_names is None else joint_names
            rest_qpos = getattr(robot, "HOME_QPOS", None) if rest_qpos is None else rest_qpos
        self._mj = mujoco
        self.limits = limits or FeasibilityLimits()
        self.joint_names = list(joint_names)
        try:
            m = self.model = mujoco.MjModel.from_xml_path(str(xml_path))
        except ValueError as e:
            raise FlywheelError(f"feasibility: cannot load robot model {xml_path}: {e}") from e
        self.data = mujoco.MjData(m)
        jids = [self._joint_id(n) for n in self.joint_names]
        self.qpos_adr = np.array([m.jnt_qposadr[j] for j in jids])
        self.low, self.high = self._joint_limits(jids)
        if low is not None:
            self.low = np.asarray(low, np.float64)
        if high is not None:
            self.high = np.asarray(high, np.float64)
        self.robot_bodies = self._subtree(m.jnt_bodyid[jids[0]])
        self._root = min(self.robot_bodies)  # bodies are numbered depth-first: the subtree's root
        self._isolate_robot_geoms()
        self._link = {b: self._collision_parent(b) for b in self.robot_bodies}
        self.base_qpos = m.qpos0.copy()
        if rest_qpos is not None:
            self.base_qpos[self.qpos_adr] = np.asarray(rest_qpos, np.float64)
        self.data.qpos[:] = self.base_qpos
        self._ignored = {pair for pair, _ in self._robot_contacts()}  # touching at rest: by design

    # -- setup
    def _joint_id(self, name: str) -> int:
        j = self._mj.mj_name2id(self.model, self._mj.mjtObj.mjOBJ_JOINT, name)
        if j < 0:
            raise FlywheelError(f"feasibility: joint {name!r} is not in the robot model")
        return j

    def _joint_limits(self, jids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        m = self.model
        low, high = np.full(len(jids), -np.inf), np.full(len(jids), np.inf)
        for i, j in enumerate(jids):
            if m.jnt_limited[j]:
                low[i], high[i] = m.jnt_range[j]
                continue
            for a in range(m.nu):  # an unlimited joint: fall back to its position actuator's ctrlrange
                if m.actuator_trnid[a, 0] == j and m.actuator_ctrllimited[a]:
                    low[i], high[i] = m.actuator_ctrlrange[a]
        return low, high

    def _subtree(self, body: int) -> set[int]:
        m = self.model
        root = int(body)
        while m.body_parentid[root] != 0:
            root = int(m.body_parentid[root])
        out = set()
        for b in range(1, m.nbody):
            c = b
            while c != 0 and c != root:
                c = int(m.body_parentid[c])
            if c == root:
                out.add(b)
        return out

    def _collision_parent(self, body: int) -> int:
        """The nearest ancestor that carries collision geoms (skipping geom-less joint bodies)."""
        m, b = self.model, int(self.model.body_parentid[body])
        while b != 0 and not (m.geom_contype[m.geom_bodyid == b] != 0).any():
            b = int(m.body_parentid[b])
        return b

    def _adjacent(self, b1: int, b2: int) -> bool:
        """Parent/child in the tree of collision-bearing links, or two links hanging off the same
        non-root link (the two fingers of a hand); links off the root (two arms) are not adjacent."""
        p1, p2 = self._link[b1], self._link[b2]
        return p1 == b2 or p2 == b1 or (p1 == p2 and p1 != self._root)

    def _isolate_robot_geoms(self) -> None:
        m = self.model
        robot = np.isin(m.geom_bodyid, list(self.robot_bodies))
        collides = (m.geom_contype | m.geom_conaffinity) != 0
        on = robot & collides
        m.geom_contype[:] = np.where(on, 1, 0)
        m.geom_conaffinity[:] = np.where(on, 1, 0)
        # the broadphase also filters on per-body bits (the OR of each body's geoms): recompute them
        for b in range(m.nbody):
            bits = int(on[m.geom_bodyid == b].any())
            m.body_contype[b] = m.body_conaffinity[b] = bits

    def _robot_contacts(self) -> list[tuple[tuple[int, int], float]]:
        """Run kinematics + collision at data.qpos; robot-robot, non-adjacent body pairs with their
        deepest penetration, as [((b1, b2), depth)]."""
        m, d = self.model, self.data
        self._mj.mj_kinematics(m, d)
        self._mj.mj_collision(m, d)
        out: dict[tuple[int, int], float] = {}
        tol = self.limits.penetration_tolerance
        for i in range(d.ncon):
            c = d.contact[i]
            if -c.dist <= tol:
                continue
            b1, b2 = int(m.geom_bodyid[c.geom1]), int(m.geom_bodyid[c.geom2])
            if b1 not in self.robot_bodies or b2 not in self.robot_bodies or b1 == b2:
                continue
            if self._adjacent(b1, b2):
                continue
            pair = (min(b1, b2), max(b1, b2))
            out[pair] = max(out.get(pair, 0.0), float(-c.dist))
        return list(out.items())

    # -- checks
    def check(self, actions: np.ndarray, q0: np.ndarray | None = None) -> FeasibilityReport:
        """Score actions (T, A). `q0`: joint positions before the first action ((A,) or a proprio vector
        whose first A entries are qpos); when given, the first step's velocity is checked against it."""
        a = np.asarray(actions, np.float64)
        n_j = len(self.joint_names)
        if a.ndim != 2 or a.shape[1] != n_j:
            raise ValueError(f"feasibility check needs actions (T, {n_j}), got {a.shape}")
        t_len = a.shape[0]
        viol: list[Violation] = []
        finite = np.isfinite(a).all(axis=1)
        for t in np.flatnonzero(~finite):
            viol.append(Violation(int(t), "*", "nonfinite", float("nan")))
        tol = self.limits.limit_tolerance
        over = np.where(a > self.high + tol, a - self.high, np.where(a < self.low - tol, self.low - a, 0.0))
        for t, j in zip(*np.nonzero(over > 0)):
            viol.append(Violation(int(t), self.joint_names[j], "joint_limit", float(a[t, j])))
        viol += self._derivative_violations(a, q0)
        for t in np.flatnonzero(finite):
            self.data.qpos[:] = self.base_qpos
            self.data.qpos[self.qpos_adr] = a[t]
            for (b1, b2), depth in self._robot_contacts():
                if (b1, b2) not in self._ignored:
                    name = f"{self.model.body(b1).name}|{self.model.body(b2).name}"
                    viol.append(Violation(int(t), name, "self_collision", depth))
        bad = {v.t for v in viol}
        score = 1.0 - len(bad) / t_len if t_len else 1.0
        return FeasibilityReport(score=score, violations=sorted(viol), n_steps=t_len)

    def check_many(self, candidates: np.ndarray, q0: np.ndarray | None = None) -> list[FeasibilityReport]:
        """Score N candidate sequences (N, T, A) from the same start."""
        return [self.check(c, q0) for c in np.asarray(candidates)]

    def _derivative_violations(self, a: np.ndarray, q0: np.ndarray | None) -> list[Violation]:
        lim = self.limits
        seq, offset = a, 0
        if q0 is not None:
            seq = np.concatenate([np.asarray(q0, np.float64)[None, : a.shape[1]], a])
            offset = 1
        out = []
        kinds = (("velocity", 1, lim.max_velocity), ("acceleration", 2, lim.max_acceleration),
                 ("jerk", 3, lim.max_jerk))  # fmt: skip
        for kind, order, bound in kinds:
            if seq.shape[0] <= order:
                continue
            deriv = np.diff(seq, n=order, axis=0) / lim.dt**order  # (T' - order, A)
            bad = np.abs(deriv) > np.broadcast_to(np.asarray(bound, np.float64), deriv.shape[1:])
            for i, j in zip(*np.nonzero(bad & np.isfinite(deriv))):
                out.append(Violation(int(i + order - offset), self.joint_names[j], kind, float(deriv[i, j])))
        return out


@lru_cache(maxsize=4)
def default_checker(dt: float = 0.1) -> FeasibilityChecker:
    """A checker for the robot of `envs.robot` (cached: the model loads once per process)."""
    return FeasibilityChecker(limits=FeasibilityLimits(dt=dt))


def kinematic_feasibility(
    actions: np.ndarray, q0: np.ndarray | None = None, checker: FeasibilityChecker | None = None
) -> FeasibilityReport:
    """Score one action sequence (T, A) with `checker` (default: the robot of `envs.robot`)."""
    return (checker or default_checker()).check(actions, q0)
