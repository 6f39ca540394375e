"""Scripted IK expert for every task family: the stand-in for teleoperated demonstrations.

It reads privileged sim state from the env (object poses), plans end-effector waypoints per phase
(approach, descend, grasp, lift, transport, release, ...), moves a commanded grasp-site pose towards
each waypoint at a bounded Cartesian speed, and turns it into joint targets with damped-least-squares
IK. A script is a generator yielding one 16-dim action per control step. `noise` > 0 perturbs grasp
points and joint targets (seeded), which gives diverse demonstrations and some failures.
"""
from __future__ import annotations

from collections.abc import Iterator

import mujoco
import numpy as np

from envs.errors import EnvError
from envs.ik import yaw_quat
from envs.robot import (
    ACTION_HIGH,
    ACTION_LOW,
    ARM_SLICE,
    GRIPPER_CLOSED,
    GRIPPER_INDEX,
    GRIPPER_OPEN,
    HOME_QPOS,
)
from envs.scene import SLOT_BY_NAME, TABLE_Z
from envs.tasks import TaskInstance, parse_object

PITCH = -0.35  # forward tilt of the hand for top-down grasps (rad)
MAX_JOINT_STEP = 0.24  # rad per control step (stays under the safety filter's 2.5 rad/s at 10 Hz)
FAST, SLOW = 0.6, 0.3  # Cartesian speeds (m/s)


def grasp_quat(yaw: float, pitch: float = PITCH) -> np.ndarray:
    """Hand pointing down, turned by yaw about z and tilted by pitch about the hand's y axis."""
    q = np.zeros(4)
    mujoco.mju_mulQuat(q, yaw_quat(yaw), np.array([np.cos(pitch / 2), 0.0, np.sin(pitch / 2), 0.0]))
    return q


def side_quat(to_side: str) -> np.ndarray:
    """Hand horizontal, pointing across the body towards the other hand, fingers closing along x."""
    s = 1.0 if to_side == "right" else -1.0  # the right hand points +y, the left hand -y
    mat = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -s], [-s, 0.0, 0.0]])  # columns: hand x, y, z axes
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, mat.reshape(-1))
    return q


class ScriptedExpert:
    """`reset(task)` then `act(obs) -> action (16,)` each step; works in the env's joint action space.

    Its IK keeps the elbows and forearms clear of the torso (see envs/ik.py), so its demonstrations pass
    the kinematic feasibility check the planner applies, except in the families listed in
    `NEAR_BODY_FAMILIES`, whose motions bring the hand to the body (pulling a drawer, pushing towards
    the robot): with the clearance on, their success fell from 1.0 to 0.6-0.7.
    """

    NEAR_BODY_FAMILIES = ("push", "drawer")

    def __init__(self, env, noise: float = 0.0, seed: int = 0, smoothing: float = 0.3) -> None:
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        if not 0.0 <= smoothing < 1.0:
            raise EnvError(f"ScriptedExpert smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)
        self._smooth: np.ndarray | None = None
        if self.env.cfg.action_space != "joint":
            raise EnvError("ScriptedExpert drives the 'joint' action space; set env.action_space='joint'")
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.dt = 1.0 / self.env.cfg.control_hz
        self._gen: Iterator[np.ndarray] | None = None
        self._last = HOME_QPOS.copy()

    # ------------------------------------------------------------------ public API
    def reset(self, task: TaskInstance | dict | None = None) -> None:
        """Plan for the env's current task (call after env.reset)."""
        env = self.env
        if env.task is None:
            raise EnvError("reset the env before the expert")
        self.task = env.task
        self.avoid_torso = self.task.family not in self.NEAR_BODY_FAMILIES
        self.q = env.data.ctrl.copy().astype(np.float64)  # (16,) commanded joint targets
        self.cmd: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for side in ("left", "right"):
            self.cmd[side] = self._pose(side, self.q[ARM_SLICE[side]])
        self.home = {s: self.cmd[s] for s in self.cmd}
        self._gen = getattr(self, f"_script_{self.task.family}")()
        self._last = self.q.astype(np.float32)
        self._smooth = None

    def act(self, obs: dict | None = None) -> np.ndarray:
        """The next joint-target action (16,) float32."""
        if self._gen is None:
            self.reset()
        try:
            self._last = next(self._gen)
        except StopIteration:
            pass
        return self._last.copy()

    def shift_arms(self, shift: np.ndarray) -> None:
        """Move the commanded arm joints by `shift (14,)` rad, and the commanded grasp-site poses with them,
        keeping the current goals: the script goes on from the shifted pose towards the same waypoints at
        its own speed. For a robot that is somewhere else than the script expects (after a perturbation,
        or when the script is replayed to a lagging robot)."""
        shift = np.asarray(shift, np.float64)
        if shift.shape != (14,) or not np.all(np.isfinite(shift)):
            raise EnvError(f"shift_arms needs 14 finite joint offsets, got {shift.shape}")
        if self._gen is None:
            raise EnvError("reset the expert before shifting it")
        for side, sl in ARM_SLICE.items():
            if not np.any(shift[sl]):
                continue
            before = self._pose(side, self.q[sl])
            self.q[sl] = self.q[sl] + shift[sl]
            after = self._pose(side, self.q[sl])
            pos, quat = self.cmd[side]
            inv, turn, new_quat = np.zeros(4), np.zeros(4), np.zeros(4)
            mujoco.mju_negQuat(inv, before[1])
            mujoco.mju_mulQuat(turn, after[1], inv)
            mujoco.mju_mulQuat(new_quat, turn, quat)
            self.cmd[side] = (pos + after[0] - before[0], new_quat)
            if self._smooth is not None:
                self._smooth[sl] += shift[sl]

    def _pose(self, side: str, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grasp-site position and quaternion of one arm at joints `q` (forward kinematics)."""
        pos, mat = self.env.ik(side).forward(q)
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, mat.reshape(-1))
        return pos, quat

    # ------------------------------------------------------------------ motion primitives
    def _emit(self) -> np.ndarray:
        a = self.q.copy()
        if self.smoothing > 0:  # first-order low-pass on the arm targets (grippers pass straight through)
            if self._smooth is not None:
                a[:14] = self.smoothing * self._smooth[:14] + (1 - self.smoothing) * a[:14]
            self._smooth = a.copy()
        if self.noise > 0:
            a[:14] += self.rng.normal(0.0, 0.02 * self.noise, 14)
        return np.clip(a, ACTION_LOW, ACTION_HIGH).astype(np.float32)

    def _move(self, goals: dict[str, tuple[np.ndarray, np.ndarray]], speed: float = FAST,
              grips: dict[str, float] | None = None, settle: int = 1,
              joint_goals: dict[str, np.ndarray] | None = None,
              joint_step: float = MAX_JOINT_STEP) -> Iterator[np.ndarray]:
        """Move the commanded grasp-site poses of one or both arms to their goals (straight lines in
        Cartesian space), and/or arms to joint goals (straight lines in joint space), then settle."""
        for side, g in (grips or {}).items():
            self.q[GRIPPER_INDEX[side]] = g
        for _ in range(60):
            done = True
            for side, qg in (joint_goals or {}).items():
                sl = ARM_SLICE[side]
                step = np.clip(qg - self.q[sl], -joint_step, joint_step)
                self.q[sl] += step
                self.cmd[side] = self._pose(side, self.q[sl])
                done = done and bool(np.all(np.abs(qg - self.q[sl]) < 1e-6))
            for side, (gp, gq) in goals.items():
                pos, quat = self.cmd[side]
                delta = gp - pos
                dist = float(np.linalg.norm(delta))
                step = speed * self.dt
                frac = 1.0 if dist <= step else step / dist
                new_pos = pos + delta * frac
                new_quat = np.zeros(4)
                ang = _quat_angle(quat, gq)
                rfrac = 1.0 if ang <= 0.35 else max(frac, 0.35 / ang)
                _slerp(new_quat, quat, gq, rfrac)
                self.cmd[side] = (new_pos, new_quat)
                sl = ARM_SLICE[side]
                q, _ = self.env.ik(side).solve(new_pos, new_quat, self.q[sl], iters=25, avoid_torso=self.avoid_torso)
                self.q[sl] += np.clip(q - self.q[sl], -MAX_JOINT_STEP, MAX_JOINT_STEP)
                done = done and frac >= 1.0 and rfrac >= 1.0
            yield self._emit()
            if done:
                break
        for _ in range(settle):
            yield self._emit()

    def _grip(self, sides: dict[str, float], steps: int = 3) -> Iterator[np.ndarray]:
        for side, g in sides.items():
            self.q[GRIPPER_INDEX[side]] = g
        for _ in range(steps):
            yield self._emit()

    # ------------------------------------------------------------------ helpers
    def _jitter(self, scale: float = 0.008) -> np.ndarray:
        return self.rng.normal(0.0, scale * self.noise, 3) * np.array([1, 1, 0.3]) if self.noise > 0 else np.zeros(3)

    def _global_ik(self, side: str, pos: np.ndarray, quat: np.ndarray, restarts: int = 12) -> np.ndarray:
        """IK from the current joints and from fixed random restarts; the accurate solution nearest
        to the current joints (for poses a Cartesian straight line cannot reach)."""
        ik = self.env.ik(side)
        cur = self.q[ARM_SLICE[side]]
        rng = np.random.default_rng(0)
        best, best_cost = cur, np.inf
        for k in range(restarts + 1):
            q0 = cur if k == 0 else rng.uniform(ik.lo, ik.hi)
            q, err = ik.solve(pos, quat, q0, iters=200, posture=0.0, avoid_torso=self.avoid_torso)
            _, mat = ik.forward(q)
            qm = np.zeros(4)
            mujoco.mju_mat2Quat(qm, mat.reshape(-1))
            cost = err + 0.05 * _quat_angle(qm, quat)
            cost += 0.002 * float(np.abs(q - cur).sum()) if cost < 0.01 else 0.0
            if cost < best_cost:
                best, best_cost = q, cost
        return best

    def _side_for(self, y: float) -> str:
        return "left" if y >= 0 else "right"

    def _best_arm(self, *points: np.ndarray, quat: np.ndarray | None = None) -> str:
        """The arm that reaches all `points` (grasp-site targets, top-down) with the smaller IK error;
        ties go to the arm on the side of the points."""
        quat = grasp_quat(0.0) if quat is None else quat
        errs = {}
        for side in ("left", "right"):
            ik = self.env.ik(side)
            errs[side] = max(ik.solve(p, quat, ik.rest, iters=60, avoid_torso=self.avoid_torso)[1] for p in points)
        if abs(errs["left"] - errs["right"]) < 0.005:
            return self._side_for(float(np.mean([p[1] for p in points])))
        return min(errs, key=errs.get)

    def _grasp_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        env = self.env
        pos = env.object_pos(name)
        _, shape = parse_object(name)
        slot = SLOT_BY_NAME.get(shape) or SLOT_BY_NAME[f"{shape}_0"]
        centre_z = pos[2] + (0.0 if shape not in ("bowl", "lunchbox", "tissue_box") else slot.half_height)
        yaw = env.object_yaw(name)
        if shape == "cube":
            yaw = (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
        elif shape == "mug":
            yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
        else:
            yaw = 0.0
        target = np.array([pos[0], pos[1], max(centre_z, TABLE_Z + 0.034)]) + self._jitter()
        return target, grasp_quat(yaw)

    def _pick_up(self, name: str, side: str, lift_to: np.ndarray | None = None) -> Iterator[np.ndarray]:
        gp, gq = self._grasp_pose(name)
        up = np.array([0, 0, 0.10])
        yield from self._move({side: (gp + up, gq)}, FAST, grips={side: GRIPPER_OPEN})
        yield from self._move({side: (gp, gq)}, SLOW, settle=1)
        yield from self._grip({side: GRIPPER_CLOSED}, steps=3)
        dest = lift_to if lift_to is not None else gp + np.array([0, 0, 0.12])
        yield from self._move({side: (dest, gq)}, SLOW, settle=1)

    # ------------------------------------------------------------------ scripts per family
    def _script_pick(self) -> Iterator[np.ndarray]:
        name = self.task.objects["object"]
        side = self._best_arm(self._grasp_pose(name)[0])
        yield from self._pick_up(name, side)
        while True:
            yield self._emit()

    def _script_place(self) -> Iterator[np.ndarray]:
        env = self.env
        name, target = self.task.objects["object"], self.task.objects["target"]
        side = self._best_arm(self._grasp_pose(name)[0], env.object_pos(target) + np.array([0, 0, 0.06]))
        yield from self._pick_up(name, side)
        site = env.data.site_xpos[env.model.site(f"{side}_grasp").id]
        offset = env.object_pos(name) - site  # object relative to the grasp site while held
        gq = self.cmd[side][1]
        tp = env.object_pos(target) + self._jitter(0.006)
        drop_z = tp[2] + 0.008 + _half_height(name) + 0.015  # object centre ~1.5 cm above the floor/plate
        above = np.array([tp[0], tp[1], 0.90]) - np.array([offset[0], offset[1], 0.0])
        yield from self._move({side: (above, gq)}, FAST, settle=1)
        release = np.array([above[0], above[1], drop_z - offset[2]])
        yield from self._move({side: (release, gq)}, SLOW, settle=1)
        yield from self._grip({side: GRIPPER_OPEN}, steps=3)
        yield from self._move({side: (release + np.array([0, 0, 0.10]), gq)}, FAST, settle=0)
        yield from self._move({side: self.home[side]}, FAST)
        while True:
            yield self._emit()

    def _script_push(self) -> Iterator[np.ndarray]:
        env = self.env
        name, target = self.task.objects["object"], self.task.objects["target"]
        op, tp = env.object_pos(name), env.object_pos(target)
        u = (tp - op)[:2]
        u /= np.linalg.norm(u) + 1e-9
        goal = tp[:2] - u * 0.065
        side = self._best_arm(np.array([*(op[:2] - u * 0.05), TABLE_Z + 0.04]), np.array([*goal, TABLE_Z + 0.04]))
        yaw = float(np.arctan2(u[1], u[0])) - np.pi / 2  # closed fingers side by side facing the push
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
        q = grasp_quat(yaw, -0.15)
        z = TABLE_Z + 0.04
        start = np.array([*(op[:2] - u * 0.05), z]) + self._jitter()
        end = np.array([*(goal - u * 0.02), z])
        yield from self._move({side: (start + np.array([0, 0, 0.10]), q)}, FAST, grips={side: GRIPPER_CLOSED})
        yield from self._move({side: (start, q)}, SLOW)
        yield from self._move({side: (end, q)}, 0.2, settle=2)
        yield from self._move({side: (end + np.array([0, 0, 0.10]), q)}, FAST, settle=0)
        yield from self._move({side: self.home[side]}, FAST)
        while True:
            yield self._emit()

    def _script_drawer(self) -> Iterator[np.ndarray]:
        env = self.env
        handle = env.data.geom_xpos[env.model.geom("drawer_handle").id].copy()
        side = self._side_for(handle[1])
        q = grasp_quat(0.0)
        gp = handle + np.array([0.0, 0.0, 0.005]) + self._jitter(0.005)
        opening = self.task.params.get("verb", "open") == "open"
        dx = -0.10 if opening else 0.10
        yield from self._move({side: (gp + np.array([0, 0, 0.08]), q)}, FAST, grips={side: GRIPPER_OPEN})
        yield from self._move({side: (gp, q)}, SLOW)
        yield from self._grip({side: GRIPPER_CLOSED}, steps=3)
        yield from self._move({side: (gp + np.array([dx, 0, 0]), q)}, 0.2, settle=2)
        yield from self._grip({side: GRIPPER_OPEN}, steps=2)
        yield from self._move({side: (gp + np.array([dx, 0, 0.10]), q)}, FAST)
        while True:
            yield self._emit()

    def _script_tissue(self) -> Iterator[np.ndarray]:
        env = self.env
        tissue = env.data.geom_xpos[env.model.geom("tissue").id].copy()
        side = self._side_for(tissue[1])
        q = grasp_quat(0.0)
        gp = tissue + np.array([0.0, 0.0, 0.028]) + self._jitter(0.004)
        yield from self._move({side: (gp + np.array([0, 0, 0.08]), q)}, FAST, grips={side: GRIPPER_OPEN})
        yield from self._move({side: (gp, q)}, SLOW)
        yield from self._grip({side: GRIPPER_CLOSED}, steps=3)
        yield from self._move({side: (gp + np.array([0, 0, 0.12]), q)}, 0.25, settle=2)
        while True:
            yield self._emit()

    def _script_handover(self) -> Iterator[np.ndarray]:
        env = self.env
        name = self.task.objects["object"]
        src, dst = self.task.params.get("from", "left"), self.task.params.get("to", "right")
        s = 1.0 if src == "left" else -1.0
        meet = np.array([0.38, s * 0.03, 0.92])
        yield from self._pick_up(name, src, lift_to=None)
        site = env.data.site_xpos[env.model.site(f"{src}_grasp").id]
        offset = env.object_pos(name) - site
        gq = grasp_quat(0.0, 0.0)  # square the object to the world axes for the other hand
        dq = side_quat(dst)
        obj_at = meet + offset
        pre = obj_at + np.array([0.0, -s * 0.12, 0.0])
        q_pre = self._global_ik(dst, pre, dq)
        yield from self._move({src: (meet, gq)}, FAST, grips={dst: GRIPPER_OPEN}, settle=1, joint_goals={dst: q_pre})
        grasp = obj_at + np.array([0.0, -s * 0.005, 0.0])
        yield from self._move({}, joint_goals={dst: self._global_ik(dst, grasp, dq)}, joint_step=0.08, settle=1)
        yield from self._grip({dst: GRIPPER_CLOSED}, steps=3)
        yield from self._grip({src: GRIPPER_OPEN}, steps=2)
        yield from self._move({src: (meet + np.array([0.0, s * 0.08, 0.06]), gq)}, FAST, settle=0)
        yield from self._move({src: self.home[src]}, FAST)
        while True:
            yield self._emit()


class PerturbedExpert:
    """The scripted expert with injected disturbances and its recoveries (as in DART, Laskey et al. 2017):
    data for models that must act from states the clean expert never visits.

    At each step, with probability `rate`, a burst starts: for `burst` steps (drawn from the range) the
    arm targets are the expert's last ones plus a random offset on one arm (uniform in +-`scale` rad per
    joint), with the script paused; then the expert is shifted to the displaced pose (`shift_arms`) and
    goes on from there towards its waypoints. Every recorded action is the one executed, so the episode
    is ordinary training data. The same `act` / `reset` API as ScriptedExpert."""

    def __init__(self, env, noise: float = 0.0, seed: int = 0, rate: float = 0.06,
                 burst: tuple[int, int] = (2, 4), scale: float = 0.25) -> None:
        if not 0.0 <= rate <= 1.0 or scale < 0 or not 1 <= burst[0] <= burst[1]:
            raise EnvError(f"PerturbedExpert needs rate in [0, 1], scale >= 0, 1 <= burst[0] <= burst[1]; "
                           f"got {rate}, {scale}, {burst}")
        self.expert = ScriptedExpert(env, noise=noise, seed=seed)
        self.env = self.expert.env
        self.rng = np.random.default_rng(seed + 7_654_321)
        self.rate, self.burst, self.scale = float(rate), (int(burst[0]), int(burst[1])), float(scale)
        self.left = 0
        self.offset = np.zeros(14)
        self.base = HOME_QPOS.astype(np.float32)
        self.prev: np.ndarray | None = None
        self.bursts = 0

    def reset(self, task: TaskInstance | dict | None = None) -> None:
        self.expert.reset(task)
        self.left, self.bursts = 0, 0
        self.base = self.expert._last.copy()
        self.prev = None

    def act(self, obs: dict | None = None) -> np.ndarray:
        if self.left == 0 and self.rng.random() < self.rate:
            self.left = int(self.rng.integers(self.burst[0], self.burst[1] + 1))
            self.offset = np.zeros(14)
            sl = ARM_SLICE[("left", "right")[int(self.rng.integers(2))]]
            self.offset[sl] = self.rng.uniform(-self.scale, self.scale, sl.stop - sl.start)
            self.bursts += 1
        if self.left > 0:
            self.left -= 1
            a = self.base.copy()
            a[:14] += self.offset
            a = self._limited(a)
            if self.left == 0:  # recover from where the arm was taken
                self.expert.shift_arms(a[:14].astype(np.float64) - self.base[:14])
            self.prev = a
            return a.copy()
        self.base = self.expert.act(obs)
        self.prev = self._limited(self.base)
        return self.prev.copy()

    def _limited(self, a: np.ndarray) -> np.ndarray:
        """Clipped to the action range, arm targets at most MAX_JOINT_STEP from the last action (the
        safety filter's joint-velocity limit)."""
        a = np.clip(a, ACTION_LOW, ACTION_HIGH).astype(np.float32)
        if self.prev is not None:
            a[:14] = self.prev[:14] + np.clip(a[:14] - self.prev[:14], -MAX_JOINT_STEP, MAX_JOINT_STEP)
        return a


class RecoveryExpert:
    """The expert taking over from a robot that went wrong (DAgger-style recovery data, Ross et al. 2011).

    Each episode starts with a detour: for `detour_steps` steps (drawn from the range) the arm the expert
    would use moves, at the expert's speed, towards a wrong grasp pose near the task's object: `offset` m
    beside it (drawn from the range, in a random direction), `lift` m above it, the hand's yaw off by up to
    `yaw` rad. That is where the imagine-then-act planner's hand ends up when it fails (docs/BENCHMARKS.md,
    session 29: 4-12 cm beside the object, a few cm above it). Then a fresh `ScriptedExpert` plans from the
    robot's current commanded pose and finishes the task. `takeover_step` is the number of detour actions: the
    episode's frames from that index on, with the actions after it, are the expert's correction (what the
    world model trains on: `flywheel.data.LoadedEpisode.first_step`). The same `act` / `reset` API as
    ScriptedExpert."""

    def __init__(self, env, noise: float = 0.0, seed: int = 0, detour_steps: tuple[int, int] = (4, 14),
                 offset: tuple[float, float] = (0.04, 0.12), lift: tuple[float, float] = (0.03, 0.10),
                 yaw: float = 0.6) -> None:
        if not 0 <= detour_steps[0] <= detour_steps[1] or not 0.0 <= offset[0] <= offset[1] \
                or not 0.0 <= lift[0] <= lift[1] or yaw < 0:
            raise EnvError(f"RecoveryExpert needs 0 <= detour_steps[0] <= detour_steps[1], ordered non-negative "
                           f"offset and lift ranges and yaw >= 0; got {detour_steps}, {offset}, {lift}, {yaw}")
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        self.noise, self.seed = float(noise), int(seed)
        self.rng = np.random.default_rng(seed + 4_242_424)
        self.detour_steps, self.offset, self.lift, self.yaw = detour_steps, offset, lift, float(yaw)
        self.expert: ScriptedExpert | None = None
        self.takeover_step = 0
        self.detour_goal: np.ndarray | None = None  # where the detour's grasp site was sent (m)
        self._detour: Iterator[np.ndarray] | None = None
        self._task: TaskInstance | dict | None = None
        self._steps = 0
        self._last = HOME_QPOS.astype(np.float32)

    def reset(self, task: TaskInstance | dict | None = None) -> None:
        planner = ScriptedExpert(self.env, noise=0.0, seed=self.seed)  # its helpers plan the detour
        planner.reset(task)
        task_obj = planner.task
        name = task_obj.objects["object"]
        gp, _ = planner._grasp_pose(name)
        side = task_obj.params.get("from") if task_obj.family == "handover" else planner._best_arm(gp)
        ang = self.rng.uniform(-np.pi, np.pi)
        r = self.rng.uniform(*self.offset)
        goal = gp + np.array([r * np.cos(ang), r * np.sin(ang), self.rng.uniform(*self.lift)])
        goal_yaw = self.env.object_yaw(name) + self.rng.uniform(-self.yaw, self.yaw)
        self.detour_goal = goal
        self.takeover_step = int(self.rng.integers(self.detour_steps[0], self.detour_steps[1] + 1))
        self._detour = planner._move({side: (goal, grasp_quat(goal_yaw))}, FAST, grips={side: GRIPPER_OPEN},
                                     settle=self.takeover_step)
        self._steps, self.expert, self._task = 0, None, task
        self._last = planner._last.copy()

    def act(self, obs: dict | None = None) -> np.ndarray:
        if self._detour is None:
            raise EnvError("reset the recovery expert before act")
        if self._steps < self.takeover_step:
            self._last = next(self._detour, self._last)
            self._steps += 1
            return self._last.copy()
        if self.expert is None:  # take over from where the robot is now (its commanded joints)
            self.expert = ScriptedExpert(self.env, noise=self.noise, seed=self.seed)
            self.expert.reset(self._task)
        self._steps += 1
        self._last = self.expert.act(obs)
        return self._last.copy()


def _half_height(name: str) -> float:
    _, shape = parse_object(name)
    return (SLOT_BY_NAME.get(shape) or SLOT_BY_NAME[f"{shape}_0"]).half_height


def _quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.arccos(np.clip(abs(np.dot(a, b)), 0.0, 1.0)))


def _slerp(out: np.ndarray, a: np.ndarray, b: np.ndarray, t: float) -> None:
    if np.dot(a, b) < 0:
        b = -b
    ang = np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))
    if ang < 1e-6:
        out[:] = b
        return
    out[:] = (np.sin((1 - t) * ang) * a + np.sin(t * ang) * b) / np.sin(ang)
    out /= np.linalg.norm(out)
