"""Scripted expert on a CI subset of every family, play data, and the episode collector."""
from __future__ import annotations

import numpy as np
import pytest

from envs.config import EnvConfig
from envs.errors import EnvError
from envs.expert import PerturbedExpert, RecoveryExpert, ScriptedExpert
from envs.play import PlayPolicy, collect_episode
from envs.robot import ACTION_HIGH, ACTION_LOW, ARM_SLICE, HOME_QPOS
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


def test_shift_arms_zero_is_a_no_op_and_bad_input_is_refused(env):
    item = ci_subset("in_distribution", 1)[0]
    runs = []
    for shift in (False, True):
        env.reset(options={"task": item.task()})
        ex = ScriptedExpert(env, seed=0)
        ex.reset()
        acts = [ex.act() for _ in range(3)]
        if shift:
            ex.shift_arms(np.zeros(14))
        runs.append(np.stack(acts + [ex.act() for _ in range(5)]))
    np.testing.assert_array_equal(runs[0], runs[1])
    with pytest.raises(EnvError, match="14 finite"):
        ex.shift_arms(np.full(14, np.nan))


def test_shift_arms_moves_the_commands(env):
    item = next(it for it in ci_subset("in_distribution", 4) if it.family == "pick")
    env.reset(options={"task": item.task()})
    ex = ScriptedExpert(env, seed=0)
    ex.reset()
    first = ex.act()
    shift = np.zeros(14)
    side = next(s for s, sl in ARM_SLICE.items() if np.abs(first[sl] - HOME_QPOS[sl]).max() > 1e-3)  # the moving arm
    shift[ARM_SLICE[side]] = 0.1
    ex.shift_arms(shift)
    nxt = ex.act()
    # the next command starts from the shifted pose (not the old one) ...
    assert np.abs(nxt[ARM_SLICE[side]] - (first[ARM_SLICE[side]] + 0.1)).max() < 0.3
    assert np.abs(nxt[ARM_SLICE[side]] - first[ARM_SLICE[side]]).mean() > 0.02


def test_perturbed_expert_disturbs_recovers_and_respects_the_step_limit(env):
    item = next(it for it in ci_subset("in_distribution", 4) if it.family == "pick")
    clean = collect_episode(env, ScriptedExpert(env, seed=3), item.task(), seed=0)
    none = collect_episode(env, PerturbedExpert(env, seed=3, rate=0.0), item.task(), seed=0)
    np.testing.assert_allclose(clean.actions, none.actions, atol=1e-6)  # no bursts: the expert itself
    pert = PerturbedExpert(env, seed=3, rate=0.3, scale=0.25)
    ep = collect_episode(env, pert, item.task(), seed=0)
    assert pert.bursts >= 1
    assert np.abs(ep.actions[: len(clean.actions)] - clean.actions[: len(ep.actions)]).max() > 0.1
    assert np.all(ep.actions >= ACTION_LOW) and np.all(ep.actions <= ACTION_HIGH)
    assert np.abs(np.diff(ep.actions[:, :14], axis=0)).max() <= 0.24 + 1e-5
    with pytest.raises(EnvError, match="rate"):
        PerturbedExpert(env, rate=2.0)


def test_recovery_expert_detours_then_the_expert_finishes(env):
    """A detour towards a wrong grasp pose beside the object, then the expert takes over from there and (mostly)
    succeeds; the takeover step is logged and the actions stay within the limits and the joint-step bound."""
    items = ci_subset("in_distribution", 4) + ci_subset("new_tasks", 4)
    wins = 0
    for i, item in enumerate(items):
        ex = RecoveryExpert(env, seed=i)
        ep = collect_episode(env, ex, item.task(), seed=0)
        k = ex.takeover_step
        assert 4 <= k <= 14 and ep.length > k
        goal = ex.detour_goal
        env.reset(options={"state": ep.initial_state})  # where the object was when the detour was planned
        beside = np.linalg.norm((goal - env.object_pos(item.task().objects["object"]))[:2])
        assert 0.04 - 0.02 <= beside <= 0.12 + 0.02  # the grasp point is the object's centre, give or take
        # the detour moved the arm away from home (towards its goal) before the takeover
        assert np.abs(ep.actions[k - 1, :14] - HOME_QPOS[:14]).max() > 0.05
        assert np.all(ep.actions >= ACTION_LOW) and np.all(ep.actions <= ACTION_HIGH)
        assert np.abs(np.diff(ep.actions[:, :14], axis=0)).max() <= 0.24 + 1e-5
        wins += ep.success
    assert wins >= 6, f"the expert recovered in {wins} of {len(items)} episodes"
    with pytest.raises(EnvError, match="detour_steps"):
        RecoveryExpert(env, detour_steps=(5, 2))
    with pytest.raises(EnvError, match="reset the recovery expert"):
        RecoveryExpert(env).act()
