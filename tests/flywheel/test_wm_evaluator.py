"""The world model as policy evaluator: rollouts inside a tiny world model, the comparison math, the CLI."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)

from flywheel.config import Config
from flywheel.errors import FlywheelError
from flywheel.evaluation import wm_evaluator as wme


@pytest.fixture(scope="module")
def tiny_wm():
    from policies.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(num_layers=1, ffn_dim=64, success_hidden=16)).eval()


@pytest.fixture(scope="module")
def states():
    return wme.states_from_split(Config().env, "in_distribution", 2)


def test_rollouts_give_a_probability_per_policy_per_state(tiny_wm, states):
    cfg = Config()
    specs = [wme.PolicySpec.parse(s) for s in ("expert@0", "play", "random")]
    results, ranking = wme.evaluate_policies(cfg, tiny_wm, specs, states, steps=1, horizon=6)
    assert [r.label for r in results] == ["expert@0", "play", "random"]
    for r in results:
        assert len(r.predicted) == len(r.real) == len(states)
        assert all(0.0 <= p <= 1.0 and math.isfinite(p) for p in r.predicted)
        assert all(isinstance(ok, bool) for ok in r.real)
        assert r.wm_seconds > 0 and r.sim_seconds > 0
    assert ranking.pairs >= 0


def test_world_model_rollout_is_closed_loop_on_predicted_frames(tiny_wm, states):
    """The policy is asked once per chunk, and from the second chunk on it sees a predicted frame and the
    proprio estimate (qpos = the last commanded targets)."""
    seen = []

    class Recorder:
        def act(self, obs):
            seen.append(obs)
            return np.tile(obs["proprio"][:16] + 0.01, (3, 1)).astype(np.float32)

    from envs.backend import make_backend

    cfg = Config()
    backend = make_backend("sim", cfg.backend, cfg.env)
    obs0 = backend.reset(state=states[0].state)
    p = wme.rollout_in_world_model(tiny_wm, Recorder(), obs0["rgb"], obs0["proprio"], states[0].instruction,
                                   horizon=7, steps=1)
    backend.close()
    assert 0.0 <= p <= 1.0
    assert len(seen) == 3  # chunks of 3, 3, 1
    np.testing.assert_array_equal(seen[0]["rgb"], obs0["rgb"])
    np.testing.assert_allclose(seen[1]["proprio"][:16], obs0["proprio"][:16] + 0.01, atol=1e-6)
    np.testing.assert_allclose(seen[1]["proprio"][16:], 0.0, atol=1e-5)  # the chunk held one target
    assert seen[1]["rgb"].dtype == np.uint8 and seen[1]["rgb"].shape == obs0["rgb"].shape


def test_expert_plan_depends_on_the_initial_state_only(states):
    planner = wme.ScriptPlanner(Config().env)
    spec = wme.PolicySpec.parse("expert@0")
    a = planner.plan(spec, states[0].state, 12, seed=3)
    b = planner.plan(spec, states[0].state, 12, seed=3)
    c = planner.plan(spec, states[1].state, 12, seed=3)
    assert a.shape == (12, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)  # a different scene, a different plan


def test_compare_on_constructed_numbers():
    real = [0.8, 0.5, 0.55, 0.0]
    good = wme.compare([0.9, 0.6, 0.3, 0.1], real)
    assert good.pairs == 5  # (1, 2) differ by 5 points only
    assert good.pairwise_accuracy == 1.0
    assert good.pearson_r == pytest.approx(np.corrcoef([0.9, 0.6, 0.3, 0.1], real)[0, 1])
    one_wrong = wme.compare([0.9, 0.6, 0.05, 0.1], real)
    assert one_wrong.pairwise_accuracy == pytest.approx(4 / 5)
    assert math.isnan(wme.compare([0.5, 0.5], [0.2, 0.9]).pearson_r)  # constant prediction
    with pytest.raises(FlywheelError):
        wme.compare([0.1], [0.1, 0.2])


def test_policy_specs_parse():
    assert wme.PolicySpec.parse("expert@0.5").noise == 0.5
    assert wme.PolicySpec.parse("scripted_expert").label == "expert@0"
    assert wme.PolicySpec.parse("imagine_then_act@3:2").versions == ("3", "2")
    assert len(wme.default_specs(has_models=True)) >= 8
    for bad in ("expert@x", "walk", "random@2"):
        with pytest.raises(FlywheelError):
            wme.PolicySpec.parse(bad)


def _tiny_data_dir(tmp_path, wm):
    from db.config import DBConfig
    from db.store import ExperienceStore
    from flywheel.registry import ModelRegistry

    store = ExperienceStore.from_config(DBConfig(), tmp_path, create=True)
    ckpt = tmp_path / "ckpt"
    wm.save_pretrained(ckpt)
    reg = ModelRegistry(store, tmp_path)
    m = reg.register("world_model", ckpt, {"test": True})
    reg.promote("world_model", m.id, "test champion")


def test_cli_writes_table_and_plot(tmp_path, tiny_wm, capsys):
    from flywheel.cli import main

    args = ["eval", "world-model-ranking", "--policies", "expert@0", "random", "--states", "1", "--horizon", "4",
            "--steps", "1", "--json", f"data_dir={tmp_path}"]
    assert main(args) == 1  # no store yet
    assert "flywheel run" in capsys.readouterr().err
    _tiny_data_dir(tmp_path, tiny_wm)
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["policy"] for p in out["policies"]] == ["expert@0", "random"]
    assert {"pearson_r", "pairwise_accuracy", "pairs"} <= set(out)
    table = (tmp_path / "reports" / "wm_ranking.md").read_text()
    assert "| expert@0 |" in table and "| random |" in table
    png = (tmp_path / "reports" / "wm_ranking.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
