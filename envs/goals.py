"""Task goals: the joint configurations at which the scripted expert would grasp a task's object and to which it
would carry it, computed from a scene description and the robot's kinematics alone, without stepping any physics.

The world model's `goal_joints` conditioning reads it (docs/BENCHMARKS.md, session 31): from the object's pose
in words (`task_pose` captions) a small model has to learn an inverse-kinematics map to know where the arm must
go, and on CPU budgets it does not learn it precisely enough for the planner (sessions 26-30). The caption
upsampler already holds the object's pose; with the robot's kinematic model it can also say which joints put
the hand there. This is what `grasp_goal` does, with the expert's own choice of arm, grasp pose and IK, so the
goal at train time (from an episode's recorded start) and at plan time (from the scene the planner is given)
come from one function.

Only the families whose grasp depends on the objects' poses alone have a goal (`GOAL_FAMILIES`); the drawer's
handle and the tissue are parts of their objects the scene description does not give, and a push has no grasp.
For those `grasp_goal` returns None. `task_goals` also gives the second goal: the joints at which the expert
lets go after carrying the object (a place, a handover), or where it ends up holding it (a pick's lift).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from envs.errors import EnvError
from envs.robot import ARM_SLICE, GRIPPER_CLOSED, GRIPPER_INDEX, HOME_QPOS
from envs.tasks import TaskInstance

GOAL_FAMILIES: tuple[str, ...] = ("pick", "place", "handover")
_MAX_STEPS = 200  # the expert grasps and carries well within this (its episodes run up to 120 steps at 10 Hz)
GOALS = 2  # rows of `task_goals`: the grasp, then where the object is carried
_KINEMATICS: dict[float, Any] = {}


def _kinematics(control_hz: float) -> Any:
    """One robot model per process for the arms' IK (the objects in it play no part in the arms' kinematics)."""
    if control_hz not in _KINEMATICS:
        from envs.config import EnvConfig
        from envs.tabletop import HumanoidTabletopEnv

        _KINEMATICS[control_hz] = HumanoidTabletopEnv(EnvConfig(control_hz=control_hz, render=False))
    return _KINEMATICS[control_hz]


class _Data:
    """The robot's state as the open-loop expert sees it: its commands, and its grasp sites where those commands
    put them (forward kinematics of `q`, the expert's commanded joints, set once the expert exists)."""

    def __init__(self, robot: Any) -> None:
        self.ctrl = HOME_QPOS.astype(np.float64).copy()
        self.q = self.ctrl
        self._robot = robot

    @property
    def site_xpos(self) -> np.ndarray:
        out = np.zeros((self._robot.model.nsite, 3))
        for side, sl in ARM_SLICE.items():
            ik = self._robot.ik(side)
            out[ik.site] = ik.forward(self.q[sl])[0]
        return out


class _SceneView:
    """What the scripted expert reads of an env, from a scene description: the task, the objects' positions and
    yaws, the robot's IK, and a robot at its home pose. Once grasped (`attach`) the task's object moves with the
    hand, held where it was grasped: the expert reads its offset from the hand then, as on the real env."""

    def __init__(self, scene: dict[str, Any], control_hz: float) -> None:
        task = scene.get("task")
        if not isinstance(task, dict):
            raise EnvError("a grasp goal needs the scene description's task (a dict)")
        self.task = TaskInstance.from_dict(task)
        self.cfg = SimpleNamespace(action_space="joint", control_hz=control_hz)
        self._robot = _kinematics(control_hz)
        self.model = self._robot.model
        self.data = _Data(self._robot)
        self._held: tuple[str, str, np.ndarray] | None = None  # (object, hand, grasp site at the grasp): `attach`
        self._objects: dict[str, tuple[np.ndarray, float]] = {}
        for obj in scene.get("objects") or []:
            try:
                pos = np.asarray(obj["position"], np.float64)
                yaw = math.radians(float(obj["yaw_deg"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise EnvError(f"scene object {obj!r} needs a position (3 numbers) and yaw_deg") from exc
            if pos.shape != (3,) or not np.all(np.isfinite(pos)) or not math.isfinite(yaw):
                raise EnvError(f"scene object {obj.get('name')!r}: position and yaw must be finite, got {obj!r}")
            self._objects[str(obj["name"])] = (pos, yaw)

    def _object(self, name: str) -> tuple[np.ndarray, float]:
        if name not in self._objects:
            raise EnvError(f"the scene description has no object {name!r} (it has {sorted(self._objects)})")
        return self._objects[name]

    def _site(self, side: str) -> np.ndarray:
        return self._robot.ik(side).forward(self.data.q[ARM_SLICE[side]])[0]

    def attach(self, name: str, side: str) -> None:
        """From now on `name` moves with the `side` hand's grasp site (it has been grasped where the site is)."""
        self._held = (name, side, self._site(side))

    def object_pos(self, name: str) -> np.ndarray:
        pos = self._object(name)[0].copy()
        if self._held is not None and self._held[0] == name:
            pos += self._site(self._held[1]) - self._held[2]
        return pos

    def object_yaw(self, name: str) -> float:
        return self._object(name)[1]

    def ik(self, side: str) -> Any:
        return self._robot.ik(side)


def grasp_goal(scene: dict[str, Any], control_hz: float = 10.0) -> np.ndarray | None:
    """The 16 commanded joint positions (arms and open grippers) at which the scripted expert, starting from the
    home pose, would close its gripper on the task's object in `scene` (a `scene_description()`), or None for a
    family outside `GOAL_FAMILIES`. Deterministic: the expert runs without noise, open-loop on its own plan."""
    goals = task_goals(scene, control_hz)
    return None if goals is None else goals[0]


def task_goals(scene: dict[str, Any], control_hz: float = 10.0) -> np.ndarray | None:
    """`(GOALS, 16)` commanded joint positions of the scripted expert, open-loop from the home pose in `scene`:
    the grasp (`grasp_goal`), then the carry: the step before it first opens a gripper after the grasp (a place's
    release, a handover's exchange) or, if it never does, where its commands come to rest holding the object (a
    pick's lift). None for a family outside `GOAL_FAMILIES`."""
    from envs.expert import ScriptedExpert

    task = scene.get("task") if isinstance(scene, dict) else None
    if not isinstance(task, dict) or task.get("family") not in GOAL_FAMILIES:
        return None
    view = _SceneView(scene, control_hz)
    expert = ScriptedExpert(view, noise=0.0, seed=0)
    expert.reset()
    view.data.q = expert.q
    grips = list(GRIPPER_INDEX.values())
    before = expert.q.copy()
    grasp, still = None, 0
    for _ in range(_MAX_STEPS):
        expert.act()
        q = expert.q
        if grasp is None:
            closed = [s for s, g in GRIPPER_INDEX.items() if q[g] == GRIPPER_CLOSED and before[g] != GRIPPER_CLOSED]
            if closed:
                grasp = before.copy()
                view.attach(view.task.objects["object"], closed[0])
        elif any(q[g] != GRIPPER_CLOSED and before[g] == GRIPPER_CLOSED for g in grips):
            return _finite(np.stack([grasp, before]), task)
        else:
            still = still + 1 if np.array_equal(q, before) else 0
            if still >= 3:  # the script holds: it has finished carrying
                return _finite(np.stack([grasp, before]), task)
        before = q.copy()
    what = "grasp" if grasp is None else "finish carrying"
    raise EnvError(f"the scripted expert did not {what} within {_MAX_STEPS} steps for {task.get('instruction')!r}")


def _finite(goals: np.ndarray, task: dict[str, Any]) -> np.ndarray:
    if not np.all(np.isfinite(goals)):
        raise EnvError(f"the task goals for {task.get('instruction')!r} are not finite")
    return goals.astype(np.float32)
