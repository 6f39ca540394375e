"""Grasp goals: the joint configuration at which the scripted expert would grasp a task's object, computed from
a scene description and the robot's kinematics alone, without stepping any physics.

The world model's `goal_joints` conditioning reads it (docs/BENCHMARKS.md, session 31): from the object's pose
in words (`task_pose` captions) a small model has to learn an inverse-kinematics map to know where the arm must
go, and on CPU budgets it does not learn it precisely enough for the planner (sessions 26-30). The caption
upsampler already holds the object's pose; with the robot's kinematic model it can also say which joints put
the hand there. This is what `grasp_goal` does, with the expert's own choice of arm, grasp pose and IK, so the
goal at train time (from an episode's recorded start) and at plan time (from the scene the planner is given)
come from one function.

Only the families whose grasp depends on the objects' poses alone have a goal (`GOAL_FAMILIES`); the drawer's
handle and the tissue are parts of their objects the scene description does not give, and a push has no grasp.
For those `grasp_goal` returns None.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from envs.errors import EnvError
from envs.robot import GRIPPER_CLOSED, GRIPPER_INDEX, HOME_QPOS
from envs.tasks import TaskInstance

GOAL_FAMILIES: tuple[str, ...] = ("pick", "place", "handover")
_MAX_STEPS = 200  # the expert reaches its first grasp well within this (about 30 steps at 10 Hz)
_KINEMATICS: dict[float, Any] = {}


def _kinematics(control_hz: float) -> Any:
    """One robot model per process for the arms' IK (the objects in it play no part in the arms' kinematics)."""
    if control_hz not in _KINEMATICS:
        from envs.config import EnvConfig
        from envs.tabletop import HumanoidTabletopEnv

        _KINEMATICS[control_hz] = HumanoidTabletopEnv(EnvConfig(control_hz=control_hz, render=False))
    return _KINEMATICS[control_hz]


class _SceneView:
    """What the scripted expert reads of an env, from a scene description: the task, the objects' positions and
    yaws, the robot's IK, and a robot at its home pose."""

    def __init__(self, scene: dict[str, Any], control_hz: float) -> None:
        task = scene.get("task")
        if not isinstance(task, dict):
            raise EnvError("a grasp goal needs the scene description's task (a dict)")
        self.task = TaskInstance.from_dict(task)
        self.cfg = SimpleNamespace(action_space="joint", control_hz=control_hz)
        self.data = SimpleNamespace(ctrl=HOME_QPOS.astype(np.float64).copy())
        self._robot = _kinematics(control_hz)
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

    def object_pos(self, name: str) -> np.ndarray:
        return self._object(name)[0].copy()

    def object_yaw(self, name: str) -> float:
        return self._object(name)[1]

    def ik(self, side: str) -> Any:
        return self._robot.ik(side)


def grasp_goal(scene: dict[str, Any], control_hz: float = 10.0) -> np.ndarray | None:
    """The 16 commanded joint positions (arms and open grippers) at which the scripted expert, starting from the
    home pose, would close its gripper on the task's object in `scene` (a `scene_description()`), or None for a
    family outside `GOAL_FAMILIES`. Deterministic: the expert runs without noise, open-loop on its own plan."""
    from envs.expert import ScriptedExpert

    task = scene.get("task") if isinstance(scene, dict) else None
    if not isinstance(task, dict) or task.get("family") not in GOAL_FAMILIES:
        return None
    view = _SceneView(scene, control_hz)
    expert = ScriptedExpert(view, noise=0.0, seed=0)
    expert.reset()
    grips = [GRIPPER_INDEX[s] for s in ("left", "right")]
    before = expert.q.copy()
    for _ in range(_MAX_STEPS):
        expert.act()
        closing = [g for g in grips if expert.q[g] == GRIPPER_CLOSED and before[g] != GRIPPER_CLOSED]
        if closing:
            if not np.all(np.isfinite(before)):
                raise EnvError(f"the grasp goal for {task.get('instruction')!r} is not finite")
            return before.astype(np.float32)
        before = expert.q.copy()
    raise EnvError(f"the scripted expert did not grasp within {_MAX_STEPS} steps for {task.get('instruction')!r}")
