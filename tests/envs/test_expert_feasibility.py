"""The scripted expert's demonstrations pass the kinematic feasibility check the planner applies:
its IK keeps the elbows and forearms clear of the torso (envs/ik.py)."""
from __future__ import annotations

import numpy as np
import pytest

from envs.config import EnvConfig
from envs.expert import ScriptedExpert
from envs.splits import load_split
from envs.tabletop import HumanoidTabletopEnv
from flywheel.evaluation.feasibility import default_checker


@pytest.fixture(scope="module")
def env():
    e = HumanoidTabletopEnv(EnvConfig(render=False))
    yield e
    e.close()


def run(env, expert, item) -> tuple[np.ndarray, bool]:
    """The expert's actions (T, 16) in one episode of `item`, and its success."""
    obs, info = env.reset(options={"task": item.task()})
    expert.reset()
    actions = []
    for _ in range(env.cfg.max_steps):
        a = expert.act(obs)
        actions.append(a)
        obs, _, term, trunc, info = env.step(a)
        if term or trunc:
            break
    return np.array(actions), bool(info["success"])


def self_collisions(env, expert, item) -> tuple[int, bool]:
    """(steps of the expert's episode whose targets self-collide, success)."""
    actions, ok = run(env, expert, item)
    rep = default_checker(1.0 / env.cfg.control_hz).check(actions)
    return len({v.t for v in rep.violations if v.kind == "self_collision"}), ok


# in_distribution items whose expert motion, without the torso clearance, swings a forearm through the body
ITEMS = [it for it in load_split("in_distribution") if it.family in ("pick", "place")][:12]


def test_expert_demonstrations_do_not_self_collide(env, monkeypatch):
    expert = ScriptedExpert(env)
    results = [self_collisions(env, expert, it) for it in ITEMS]
    assert sum(ok for _, ok in results) >= 0.9 * len(ITEMS)
    assert sum(n for n, _ in results) == 0, results
    # the same episodes with the clearance switched off: the check does see the collisions
    monkeypatch.setattr(ScriptedExpert, "NEAR_BODY_FAMILIES", ("pick", "place"))
    plain = [self_collisions(env, expert, it)[0] for it in ITEMS]
    assert sum(plain) > 0, plain


def test_smoothing_takes_the_jerk_out_of_the_expert_targets(env):
    def jerk(smoothing: float) -> float:
        expert = ScriptedExpert(env, smoothing=smoothing)
        return float(np.mean([np.abs(np.diff(run(env, expert, it)[0][:, :14], n=2, axis=0)).mean() for it in ITEMS[:6]]))

    assert jerk(0.3) < 0.85 * jerk(0.0)


def test_smoothing_out_of_range_is_a_clear_error(env):
    from envs.errors import EnvError

    with pytest.raises(EnvError, match="smoothing must be in"):
        ScriptedExpert(env, smoothing=1.0)
