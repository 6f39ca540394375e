"""The backend interface and registry, on the in-process `sim` backend (the real MuJoCo env)."""
from __future__ import annotations

import numpy as np
import pytest

from envs.backend import Backend, HandWorkspace, SimBackend, StepResult, make_backend, register_backend
from envs.config import BackendConfig, EnvConfig, SafetyConfig
from envs.errors import EnvError, SafetyViolation
from envs.tasks import TaskInstance, sample_task

ENV_CFG = EnvConfig(image_size=32, max_steps=6)


@pytest.fixture(scope="module")
def sim():
    backend = make_backend("sim", BackendConfig(), ENV_CFG)
    yield backend
    backend.close()


def still(obs: dict, h: int) -> np.ndarray:
    return np.repeat(obs["proprio"][None, :16], h, axis=0).astype(np.float32)  # (H, 16) hold the pose


def test_make_backend_sim_and_contract(sim) -> None:
    assert isinstance(sim, SimBackend) and isinstance(sim, Backend)
    assert sim.action_low.shape == sim.action_high.shape == (16,)
    assert sim.action_low.dtype == np.float32 and np.all(sim.action_low < sim.action_high)


def test_reset_step_shapes_and_task(sim) -> None:
    task = sample_task("pick", seed=4)
    obs = sim.reset(task=task, seed=4)
    assert obs["rgb"].shape == (32, 32, 3) and obs["rgb"].dtype == np.uint8
    assert obs["proprio"].shape == (32,) and obs["proprio"].dtype == np.float32
    assert isinstance(sim.task, TaskInstance) and sim.task == task
    res = sim.step(still(obs, 3))
    assert isinstance(res, StepResult) and len(res.observations) == 3
    assert res.info["steps"] == 3 and not res.done and res.success is False
    assert all(np.isfinite(o["proprio"]).all() for o in res.observations)
    np.testing.assert_array_equal(sim.observe()["rgb"], res.observations[-1]["rgb"])
    assert sim.scene_description()["instruction"] == task.instruction


def test_chunk_stops_at_done_and_then_refuses(sim) -> None:
    obs = sim.reset(seed=1)
    res = sim.step(still(obs, 10))  # max_steps=6
    assert res.done and len(res.observations) == 6 and res.info["truncated"]
    with pytest.raises(EnvError, match="episode is over"):
        sim.step(still(obs, 1))


def test_every_chunk_passes_the_safety_filter(sim) -> None:
    obs = sim.reset(seed=2)
    steps = sim.env.steps
    bad = still(obs, 2)
    bad[1, 3] = np.inf
    with pytest.raises(SafetyViolation, match="non-finite"):
        sim.step(bad)
    fast = still(obs, 1)
    fast[0, 0] -= 0.6  # 6 rad/s from where the arm is
    with pytest.raises(SafetyViolation, match="rad/s"):
        sim.step(fast)
    with pytest.raises(SafetyViolation, match=r"\(H, 16\)"):
        sim.step(obs["proprio"][:16])  # a single action, not a chunk
    down = still(obs, 3)
    down[:, 3] += 0.25 * np.arange(1, 4)  # unfold the left elbow: the hand goes through the table top
    with pytest.raises(SafetyViolation, match="step 1 leaves the workspace"):
        sim.step(down)
    assert sim.env.steps == steps  # nothing reached the env
    assert sim.safety.counts["rejected"] == 4


def test_hand_workspace_matches_the_env(sim) -> None:
    obs = sim.reset(seed=5)
    ws = sim.safety.workspace
    assert isinstance(ws, HandWorkspace)
    pos = ws.positions(obs["proprio"][None, :16])[0]  # (2, 3) forward kinematics of the robot MJCF
    env_pos = np.stack([sim.env.data.site(f"{s}_grasp").xpos for s in ("left", "right")])
    np.testing.assert_allclose(pos, env_pos, atol=2e-3)  # the arm is at rest, so targets ~ joint positions
    assert ws(obs["proprio"][None, :16]).all()
    assert HandWorkspace(margin=0.5).low[2] == pytest.approx(ws.low[2] - 0.5)


def test_clamp_mode_executes_the_clamped_chunk() -> None:
    cfg = BackendConfig(safety=SafetyConfig(mode="clamp", max_joint_velocity=2.5))
    with SimBackend(cfg, ENV_CFG) as sim:
        obs = sim.reset(seed=2)
        fast = still(obs, 2)
        fast[:, 0] -= 1.0
        res = sim.step(fast)
        assert len(res.observations) == 2 and sim.safety.counts["clamped:velocity"] == 1
        moved = obs["proprio"][0] - res.observations[-1]["proprio"][0]
        assert 0.05 < moved <= 0.5 + 1e-3  # at most two 0.25 rad steps, never the full 1 rad


def test_estop_latches_until_reset(sim) -> None:
    obs = sim.reset(seed=3)
    sim.estop()
    with pytest.raises(SafetyViolation, match="e-stop"):
        sim.step(still(obs, 1))
    obs = sim.reset(seed=3)
    assert len(sim.step(still(obs, 1)).observations) == 1


def test_recorded_state_replays_exactly(sim) -> None:
    obs0 = sim.reset(seed=9)
    state = sim.get_state()
    rng = np.random.default_rng(1)
    chunk = np.clip(obs0["proprio"][:16] + np.cumsum(rng.uniform(-0.05, 0.05, (4, 16)), 0),
                    sim.action_low, sim.action_high).astype(np.float32)
    first = sim.step(chunk)
    sim.reset(seed=123)  # somewhere else entirely
    replay = sim.reset(state=state)
    np.testing.assert_array_equal(replay["rgb"], obs0["rgb"])
    np.testing.assert_array_equal(replay["proprio"], obs0["proprio"])
    again = sim.step(chunk)
    for a, b in zip(first.observations, again.observations, strict=True):
        np.testing.assert_array_equal(a["proprio"], b["proprio"])


def test_registry_names(monkeypatch) -> None:
    import envs.backend

    monkeypatch.setattr(envs.backend, "_REGISTRY", dict(envs.backend._REGISTRY))  # leave no "dummy" behind
    with pytest.raises(EnvError, match="unknown backend 'isaac:1'"):
        make_backend("isaac:1", BackendConfig(), ENV_CFG)
    with pytest.raises(EnvError, match="takes no argument"):
        make_backend("sim:fast", BackendConfig(), ENV_CFG)
    made = []
    register_backend("dummy", lambda arg, cfg, env_cfg: made.append(arg) or "backend")
    assert make_backend("dummy:r2", BackendConfig(), ENV_CFG) == "backend" and made == ["r2"]
