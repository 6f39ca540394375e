"""The humanoid tabletop env: every family resets and steps, spaces, determinism, exact state replay."""
from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest

from envs.config import EnvConfig
from envs.errors import EnvError
from envs.robot import ACTION_DIM, ACTION_HIGH, ACTION_LOW, HOME_QPOS, JOINT_NAMES, PROPRIO_DIM, ROBOT_XML
from envs.tabletop import HumanoidTabletopEnv
from envs.tasks import FAMILIES, SPLIT_FAMILIES, sample_task


@pytest.fixture(scope="module")
def env():
    e = HumanoidTabletopEnv(EnvConfig(max_steps=20))
    yield e
    e.close()


def _split_of(family: str) -> str:
    return "new_tasks" if family in SPLIT_FAMILIES["new_tasks"] else "in_distribution"


def _actions(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(HOME_QPOS + rng.normal(0, 0.1, ACTION_DIM).astype(np.float32), ACTION_LOW, ACTION_HIGH)
            for _ in range(n)]


def test_robot_constants():
    assert len(JOINT_NAMES) == ACTION_DIM == 16 and PROPRIO_DIM == 32
    assert ACTION_LOW.dtype == np.float32 and ACTION_LOW.shape == (16,) and np.all(ACTION_LOW < ACTION_HIGH)
    assert ROBOT_XML.endswith(".xml")
    import mujoco

    m = mujoco.MjModel.from_xml_path(ROBOT_XML)
    assert m.nu == 16 and m.ncam == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_resets_and_steps(env, family):
    task = sample_task(family, 3, _split_of(family))
    obs, info = env.reset(options={"task": task})
    assert obs["rgb"].shape == (64, 64, 3) and obs["rgb"].dtype == np.uint8
    assert obs["proprio"].shape == (32,) and obs["proprio"].dtype == np.float32
    assert info["instruction"] == task.instruction and info["task"]["family"] == family
    assert obs["rgb"].std() > 5  # the camera sees a scene, not a blank frame
    first = obs["rgb"].copy()
    for a in _actions(3):
        obs, reward, _, _, info = env.step(a)
        assert env.observation_space.contains(obs)
        assert np.all(np.isfinite(obs["proprio"])) and isinstance(info["success"], bool)
        assert isinstance(reward, float)
    obs2, _ = env.reset(options={"task": task.to_dict()})
    np.testing.assert_array_equal(obs2["rgb"], first)  # same seed, same first frame
    objects = env.scene_description()["objects"]
    assert set(task.objects.values()) <= {o["name"] for o in objects}
    for o in objects:  # each object's yaw, in degrees, for the task_pose captions
        assert o["yaw_deg"] == pytest.approx(np.degrees(env.object_yaw(o["name"])), abs=0.051)


def test_check_env_and_registration():
    from gymnasium.utils.env_checker import check_env

    e = gym.make("flywheel/HumanoidTabletop-v0", cfg=EnvConfig(max_steps=5))
    check_env(e.unwrapped, skip_render_check=False)
    first, _ = e.reset(seed=1)
    assert e.observation_space.contains(first)
    e.close()


def test_state_replay_is_exact(env):
    env.reset(options={"task": sample_task("place", 4, "in_distribution")})
    for a in _actions(3, seed=1):
        env.step(a)
    state = env.get_state()
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    loaded = dict(np.load(buf, allow_pickle=False))
    acts = _actions(4, seed=2)
    ref = [env.step(a)[0] for a in acts]
    ref_qpos = env.data.qpos.copy()
    fresh = HumanoidTabletopEnv(EnvConfig(max_steps=20))
    fresh.reset(options={"task": sample_task("pick", 99, "ood_objects")})  # a different scene first
    _, info = fresh.reset(options={"state": loaded})
    assert info["task"] == env.task.to_dict()
    out = [fresh.step(a)[0] for a in acts]
    for r, o in zip(ref, out):
        np.testing.assert_array_equal(r["rgb"], o["rgb"])
        np.testing.assert_array_equal(r["proprio"], o["proprio"])
    np.testing.assert_array_equal(ref_qpos, fresh.data.qpos)
    fresh.close()


def test_snapshot_is_a_copy_not_a_live_view(env):
    """A snapshot kept for later must not change as the sim moves (positions were once views of xpos)."""
    env.reset(options={"task": sample_task("pick", 5, "in_distribution")})
    snap = env.snapshot()
    kept = {n: np.array(o["pos"]) for n, o in snap["objects"].items()}
    for i in range(len(env.data.xpos)):  # move every body in the live data
        env.data.xpos[i] += 1.0
    for n, o in snap["objects"].items():
        np.testing.assert_array_equal(o["pos"], kept[n])
    env.reset(options={"task": sample_task("pick", 5, "in_distribution")})


def test_randomisation_changes_scene(env):
    a, _ = env.reset(options={"task": sample_task("pick", 1, "in_distribution")})
    b, _ = env.reset(options={"task": sample_task("pick", 2, "in_distribution")})
    c, _ = env.reset(options={"task": sample_task("pick", 1, "ood_objects")})
    assert not np.array_equal(a["rgb"], b["rgb"]) and not np.array_equal(a["rgb"], c["rgb"])
    assert env.scene_description()["table"]["material"] == "table_ood"


def test_scene_description(env):
    env.reset(options={"task": sample_task("place", 6, "in_distribution")})
    d = env.scene_description()
    assert d["task"]["family"] == "place" and d["objects"]
    for o in d["objects"]:
        assert {"name", "colour", "shape", "position"} <= set(o) and len(o["position"]) == 3
    assert all({"subject", "relation", "object"} == set(r) for r in d["relations"])


def test_user_errors(env):
    env.reset(seed=0)
    with pytest.raises(EnvError, match="shape"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(EnvError, match="NaN"):
        env.step(np.full(16, np.nan, np.float32))
    with pytest.raises(EnvError, match="missing"):
        env.set_state({"physics": np.zeros(3)})
    with pytest.raises(EnvError, match="family"):
        env.reset(options={"task": {"family": "juggle", "instruction": "x", "objects": {}, "seed": 0}})


def test_ee_delta_action_space():
    e = HumanoidTabletopEnv(EnvConfig(action_space="ee_delta", render=False))
    e.reset(seed=3)
    assert e.action_space.shape == (14,)
    site = e.model.site("left_grasp").id
    before = e.data.site_xpos[site].copy()
    a = np.zeros(14, np.float32)
    a[0] = 1.0  # left hand forward
    a[12:] = 1.0  # grippers open
    for _ in range(3):
        e.step(a)
    assert e.data.site_xpos[site][0] - before[0] > 0.05
    assert abs(e.data.site_xpos[site][1] - before[1]) < 0.03
