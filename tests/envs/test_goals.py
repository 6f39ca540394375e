"""The grasp goal (`envs.goals.grasp_goal`): from a scene description and the robot's kinematics alone, the joints at
which the scripted expert grasps, as the expert running on the real env reaches them."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from envs.config import EnvConfig
from envs.errors import EnvError
from envs.expert import ScriptedExpert
from envs.goals import GOAL_FAMILIES, GOALS, grasp_goal, task_goals
from envs.robot import GRIPPER_CLOSED, GRIPPER_INDEX, HOME_QPOS
from envs.splits import ci_subset
from envs.tabletop import HumanoidTabletopEnv


@pytest.fixture(scope="module")
def env():
    e = HumanoidTabletopEnv(EnvConfig(render=False))
    yield e
    e.close()


def expert_goals(env) -> tuple[np.ndarray, np.ndarray]:
    """The expert's commanded joints, running on the env: the step before it first closes a gripper, and the step
    before it next opens one (or where its commands rest for 3 steps)."""
    expert = ScriptedExpert(env)
    expert.reset(env.task)
    before, grasp, still = expert.q.copy(), None, 0
    grips = list(GRIPPER_INDEX.values())
    for _ in range(200):
        env.step(expert.act())
        q = expert.q
        if grasp is None:
            if any(q[g] == GRIPPER_CLOSED and before[g] != GRIPPER_CLOSED for g in grips):
                grasp = before.copy()
        elif any(q[g] != GRIPPER_CLOSED and before[g] == GRIPPER_CLOSED for g in grips):
            return grasp, before
        else:
            still = still + 1 if np.array_equal(q, before) else 0
            if still >= 3:
                return grasp, before
        before = q.copy()
    raise AssertionError("the expert never grasped and carried")


ITEMS = ci_subset("in_distribution", 4) + [it for it in ci_subset("new_tasks", 8) if it.family == "handover"][:1]


@pytest.mark.parametrize("item", ITEMS, ids=lambda it: f"{it.family}-{it.seed}")
def test_the_goal_is_where_the_expert_grasps(env, item):
    env.reset(seed=item.seed, options={"task": item.task()})
    scene = env.scene_description()
    goal = grasp_goal(scene, env.cfg.control_hz)
    assert goal is not None and goal.shape == (16,) and goal.dtype == np.float32
    goals = task_goals(scene, env.cfg.control_hz)
    assert goals.shape == (GOALS, 16) and np.array_equal(goals[0], goal)
    grasp, carry = expert_goals(env)
    # the scene gives positions to 1 mm and yaws to 0.1 degree: the goals are the expert's to well under 0.02 rad
    assert np.abs(goal - grasp).max() < 0.02
    assert np.abs(goals[1] - carry).max() < 0.1  # the carry also rests on where the real grasp held the object
    assert np.abs(goal[:14] - HOME_QPOS[:14]).max() > 0.3  # far from the home pose the robot starts at
    assert np.abs(goals[1, :14] - goal[:14]).max() > 0.1  # the object is carried away from the grasp
    assert np.array_equal(grasp_goal(scene, env.cfg.control_hz), goal)  # deterministic


def test_families_without_a_goal_and_bad_scenes(env):
    for item in ci_subset("new_tasks", 8):
        env.reset(seed=item.seed, options={"task": item.task()})
        goal = grasp_goal(env.scene_description(), env.cfg.control_hz)
        assert (goal is None) == (item.family not in GOAL_FAMILIES)
    item = ci_subset("in_distribution", 1)[0]
    env.reset(seed=item.seed, options={"task": item.task()})
    scene = env.scene_description()
    assert grasp_goal({"objects": []}) is None  # no task: no goal
    broken = copy.deepcopy(scene)
    broken["objects"][0]["position"] = [0.3, float("nan"), 0.74]
    with pytest.raises(EnvError, match="finite"):
        grasp_goal(broken)
    missing = copy.deepcopy(scene)
    missing["objects"] = [o for o in missing["objects"] if o["name"] != item.task().objects["object"]]
    with pytest.raises(EnvError, match="has no object"):
        grasp_goal(missing)
    no_yaw = copy.deepcopy(scene)
    del no_yaw["objects"][0]["yaw_deg"]
    with pytest.raises(EnvError, match="yaw_deg"):
        grasp_goal(no_yaw)
