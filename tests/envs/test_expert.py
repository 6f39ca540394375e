"""Scripted expert on a CI subset of every family, play data, and the episode collector."""
from __future__ import annotations

import numpy as np
import pytest

from envs.config import EnvConfig
from envs.expert import ScriptedExpert
from envs.play import PlayPolicy, collect_episode
from envs.robot import ACTION_HIGH, ACTION_LOW
from envs.splits import ci_subset
from envs.tabletop import HumanoidTabletopEnv

CASES = [(it.split, it) for name in ("in_distribution", "new_tasks") for it in ci_subset(name, 8)]


@pytest.fixture(scope="module")
def env():
    e = HumanoidTabletopEnv(EnvConfig(render=False))
    yield e
    e.close()


@pytest.mark.parametrize("item", [c[1] for c in CASES], ids=lambda it: f"{it.family}-{it.seed}")
def test_expert_succeeds_on_ci_subset(env, item):
    expert = ScriptedExpert(env)
    ep = collect_episode(env, expert, item.task(), seed=0)
    assert ep.success, f"expert failed: {item.instruction} (seed {item.seed})"
    assert ep.length <= env.cfg.max_steps
    assert np.all(ep.actions >= ACTION_LOW) and np.all(ep.actions <= ACTION_HIGH)
    # safety-filter friendly: joint targets move at most 0.25 rad per 0.1 s step
    assert np.abs(np.diff(ep.actions[:, :14], axis=0)).max() <= 0.25 + 1e-5


def test_expert_noise_is_seeded(env):
    item = ci_subset("in_distribution", 1)[0]
    runs = []
    for seed in (0, 0, 1):
        env.reset(options={"task": item.task()})
        ex = ScriptedExpert(env, noise=1.0, seed=seed)
        ex.reset()
        runs.append(np.stack([ex.act(None) for _ in range(5)]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_play_and_collect_episode():
    env = HumanoidTabletopEnv(EnvConfig(max_steps=25))
    ep = collect_episode(env, PlayPolicy(env, seed=3), None, seed=5, stop_on_success=False)
    assert ep.frames.shape == (26, 64, 64, 3) and ep.frames.dtype == np.uint8
    assert ep.proprio.shape == (26, 32) and ep.proprio.dtype == np.float32
    assert ep.actions.shape == (25, 16) and ep.actions.dtype == np.float32
    assert np.abs(ep.proprio[-1, :14] - ep.proprio[0, :14]).max() > 0.1  # the arms really moved
    assert not np.array_equal(ep.frames[0], ep.frames[-1])
    assert ep.task["family"] in ("pick", "place") and "physics" in ep.initial_state
    other = collect_episode(env, PlayPolicy(env, seed=4), None, seed=5, stop_on_success=False)
    assert not np.array_equal(ep.actions, other.actions)  # different play seeds, different motion
    env.close()
