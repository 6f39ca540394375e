"""Partial progress (flywheel/evaluation/progress.py): the expert reaches, holds and lifts; a robot that
holds still does none of it; the drawer's target is its handle."""
from __future__ import annotations

import numpy as np
import pytest

from envs.config import EnvConfig
from envs.expert import ScriptedExpert
from envs.robot import HOME_QPOS
from envs.splits import ci_subset
from envs.tabletop import HumanoidTabletopEnv
from flywheel.evaluation.progress import REACHED_M, EpisodeProgress, summarize_progress, target_position


@pytest.fixture(scope="module")
def env():
    e = HumanoidTabletopEnv(EnvConfig(render=False))
    yield e
    e.close()


def _item(family: str):
    return next(it for split in ("in_distribution", "new_tasks") for it in ci_subset(split, 16) if it.family == family)


def _run(env, item, act) -> dict:
    env.reset(options={"task": item.task()})
    expert = ScriptedExpert(env)
    expert.reset(env.task)
    prog = EpisodeProgress(env.task)
    prog.update(env)
    for _ in range(env.cfg.max_steps):
        _, _, term, trunc, _ = env.step(act(expert))
        prog.update(env)
        if term or trunc:
            break
    return prog.as_dict() | {"trace": prog.trace}


def test_expert_pick_reaches_holds_and_lifts(env):
    p = _run(env, _item("pick"), lambda ex: ex.act(None))
    assert p["reached"] and p["held"] and p["lifted"]
    assert p["closest_m"] < REACHED_M < p["start_m"]
    assert len(p["trace"]) > 2 and p["trace"][0] == pytest.approx(p["start_m"], abs=1e-4)
    # the offset at the closest instant is that instant's distance, split into beside and above
    assert np.hypot(p["closest_xy_m"], p["closest_dz_m"]) == pytest.approx(p["closest_m"], abs=2e-4)


def test_holding_still_makes_no_progress(env):
    p = _run(env, _item("pick"), lambda ex: HOME_QPOS.astype(np.float32))  # reset's own targets
    assert not p["reached"] and not p["held"] and not p["lifted"]
    assert p["closest_m"] == pytest.approx(p["start_m"], rel=0.05)
    assert np.hypot(p["closest_xy_m"], p["closest_dz_m"]) == pytest.approx(p["closest_m"], abs=2e-4)


def test_drawer_target_is_its_handle(env):
    item = _item("drawer")
    env.reset(options={"task": item.task()})
    handle = env.data.geom_xpos[env.model.geom("drawer_handle").id]
    np.testing.assert_allclose(target_position(env, env.task), handle)


def test_summary_counts_and_medians():
    rows = [{"start_m": 0.2, "closest_m": 0.02, "reached": True, "held": True, "lifted": False},
            {"start_m": 0.2, "closest_m": 0.2, "reached": False, "held": False, "lifted": False},
            {"start_m": 0.1, "closest_m": 0.05, "reached": False, "held": False, "lifted": False}, None]
    s = summarize_progress(rows)
    assert s == {"n": 3, "reached": 1, "held": 1, "lifted": 0, "median_closest_m": 0.05,
                 "median_closest_of_start": 0.5}  # rows without offsets (older results) report none
    rows[0] |= {"closest_xy_m": 0.01, "closest_dz_m": 0.017}
    rows[1] |= {"closest_xy_m": 0.15, "closest_dz_m": -0.13}
    s = summarize_progress(rows)
    assert s["median_closest_xy_m"] == pytest.approx(0.08) and s["median_closest_dz_m"] == pytest.approx(-0.0565)
    assert summarize_progress([None, {}]) == {"n": 0}
