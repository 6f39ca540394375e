"""Imagine-then-act episodes through the real path: models registered in the store, the in-process
scheduler (ledger, `run_episode`, the episode body that writes to the store), on `sim` and on `neo` (bridge
on loopback). Every candidate and the choice are in the store afterwards; a model that emits NaN, or a
step where nothing is acceptable, ends the episode with a recorded failure, never a crash or a command.

The tiny models are real (untrained; the IDM's action statistics sit at the home pose, so its extractions
are small feasible motions). The "NaN model" is a real IDM checkpoint whose action mean is NaN, loaded by
the worker like any other version.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from envs import robot
from workers.client import InProcessDispatcher, Scheduler

torch.set_num_threads(1)
S, N, H = 32, 2, 4  # image side, candidates, actions executed per plan

TINY = [
    "policy=imagine_then_act", f"env.image_size={S}", "env.max_steps=12",
    f"world_model.image_size={S}", "world_model.num_frames=5", "world_model.num_layers=1", "world_model.ffn_dim=64",
    "world_model.text_layers=1", "world_model.text_vocab_size=256", "world_model.max_text_tokens=16",
    "world_model.success_hidden=16",
    f"idm.image_size={S}", "idm.window=4", "idm.cnn_channels=8", "idm.feature_dim=32", "idm.hidden_dim=32",
    "idm.head_layers=1", "idm.head_heads=2", "idm.noise_samples=2", "idm.flow_steps=2", "idm.proprio_passes=1",
    f"policy.n_candidates={N}", "policy.imagine_frames=5", f"policy.horizon={H}", "policy.sampling_steps=2",
]


from _doubles import RecordingBackend


@pytest.fixture(autouse=True)
def fresh_worker_caches(monkeypatch):
    """Workers cache backends, policies and models per process, keyed by name and version number; each
    test has its own store (where version 1 is another model), so each starts with empty caches."""
    import workers.episode
    import workers.models

    backends: dict[str, Any] = {}
    monkeypatch.setattr(workers.episode, "_backends", backends)
    monkeypatch.setattr(workers.episode, "_policies", {})
    monkeypatch.setattr(workers.models, "_models", {})
    yield
    for b in backends.values():
        b.close()


def setup_store(tmp_path: Path, *extra: str, nan_idm: bool = False) -> tuple[Any, Scheduler]:
    """A config, and a scheduler whose store has a tiny world model and IDM registered as champions."""
    from flywheel.compose import compose, to_object
    from flywheel.registry import ModelRegistry
    from policies.idm import InverseDynamicsModel
    from policies.world_model import WorldModel

    cfg = to_object(compose([f"data_dir={tmp_path / 'data'}", *TINY, *extra]))
    sched = Scheduler(cfg, inline=True)
    torch.manual_seed(0)
    wm, idm = WorldModel(cfg.world_model), InverseDynamicsModel(cfg.idm)
    g = torch.Generator().manual_seed(0)
    home = torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32)
    idm.fit_normalization(home + 1e-3 * torch.randn(64, 16, generator=g),
                          torch.cat([home, torch.zeros(16)]) + 1e-3 * torch.randn(64, 32, generator=g))
    if nan_idm:  # every extraction now has a NaN joint target (whatever the IDM's target parameterisation)
        with torch.no_grad():
            (idm.pose_head[-1] if idm.pose else idm.head.out).bias[3] = float("nan")
    reg = ModelRegistry(sched.store, cfg.data_path)
    for kind, model in (("world_model", wm), ("idm", idm)):
        model.save_pretrained(tmp_path / kind)
        row = reg.register(kind, tmp_path / kind, {"test": kind})
        reg.promote(kind, row.id, "test champion")
    return cfg, sched


def spy_backend(cfg: Any, name: str) -> RecordingBackend:
    """Put a recording wrapper around the worker's backend `name` (run_episode then uses it)."""
    import workers.episode

    rec = RecordingBackend(workers.episode.get_backend(cfg, name))
    workers.episode._backends[name] = rec
    return rec


def run_one(sched: Scheduler, **spec: Any) -> Any:
    [run_id] = sched.enqueue({"policy": "imagine_then_act", "family": "pick", "seed": 3, **spec})
    [row] = sched.wait([run_id], timeout=60)
    assert row.state == "succeeded", row.error
    return sched.store.get_episode(row.result["episode_id"])


def assert_candidates_recorded(sched: Scheduler, ep: Any, plans: int, rounds: int = 1) -> list[Any]:
    """`rounds`: batches imagined per planning step (1 + policy.resample_rounds when none was acceptable)."""
    cands = sched.store.candidates(ep.id)
    n = N * rounds
    assert [(c.plan_step, c.index) for c in cands] == [(p, i) for p in range(plans) for i in range(n)]
    assert len(ep.meta["plan_steps"]) == plans
    for p in range(plans):
        step = [c for c in cands if c.plan_step == p]
        assert {"success", "feasibility", "idm_spread", "combined"} <= set(step[0].scores)
        assert step[0].artifact_uri and step[0].artifact_uri == step[1].artifact_uri  # one video file per step
        videos = sched.store.artifacts.get_arrays(step[0].artifact_uri, step[0].artifact_sha256)["videos"]
        assert videos.shape == (n, 5, S, S, 3) and videos.dtype == np.uint8
    return cands


# ------------------------------------------------------------------ the full loop


def test_sim_episode_records_every_candidate_and_the_choice(tmp_path):
    cfg, sched = setup_store(tmp_path)
    rec = spy_backend(cfg, "sim")
    dispatcher = InProcessDispatcher(cfg, store=sched.store)
    [run_id] = dispatcher.dispatch([{"policy": "imagine_then_act", "family": "pick", "seed": 3}])
    [row] = dispatcher.wait([run_id], timeout=60)
    assert row.state == "succeeded", row.error
    ep = sched.store.get_episode(row.result["episode_id"])
    assert ep.policy == "imagine_then_act" and ep.source == "rollout" and ep.length == 12
    assert ep.world_model_version == 1 and ep.idm_version == 1
    cands = assert_candidates_recorded(sched, ep, plans=3)
    for p in range(3):  # exactly one chosen per step, the best combined score among the acceptable
        step = [c for c in cands if c.plan_step == p]
        [chosen] = [c for c in step if c.chosen]
        ok = [c for c in step if c.rejected_reason is None]
        assert chosen.scores["combined"] == max(c.scores["combined"] for c in ok)
    assert len(rec.sent) == 3 and all(c.shape == (H, 16) for c in rec.sent)
    # each plan started from the safety filter's reference: the reset pose, then the last accepted target
    assert len(rec.references) == 3
    np.testing.assert_allclose(rec.references[0][:14], robot.HOME_QPOS[:14], atol=0.05)
    for ref, prev in zip(rec.references[1:], rec.sent[:-1], strict=True):
        np.testing.assert_allclose(ref, prev[-1], atol=1e-6)
    sent = np.concatenate(rec.sent)
    assert np.isfinite(sent).all() and (sent >= robot.ACTION_LOW).all() and (sent <= robot.ACTION_HIGH).all()
    np.testing.assert_allclose(sched.store.load_arrays(ep.id)["actions"], sent)  # what ran is what was stored


def test_each_plan_starts_from_the_backends_latest_observation(tmp_path, monkeypatch):
    """run_episode plans from the observation the backend holds once it has been asked for the safety
    reference (on NEO a fresh reply: after a watchdog hold, the held robot's frame), not from the last chunk's
    final frame; the recorded frames stay the steps' own."""
    from policies.imagine_then_act import ImagineThenActPolicy

    cfg, sched = setup_store(tmp_path)
    rec = spy_backend(cfg, "sim")
    tags: list[int] = []

    def latest_observation() -> dict:  # the newest observation, marked with the plan it was handed to
        obs = dict(rec.backend.latest_observation())
        obs["plan_tag"] = np.array(len(tags))
        tags.append(len(tags))
        return obs

    seen: list[int | None] = []
    act = ImagineThenActPolicy.act

    def spy_act(self, obs):
        seen.append(int(obs["plan_tag"]) if "plan_tag" in obs else None)
        return act(self, obs)

    monkeypatch.setattr(rec, "latest_observation", latest_observation, raising=False)
    monkeypatch.setattr(ImagineThenActPolicy, "act", spy_act)
    ep = run_one(sched)
    assert seen == [0, 1, 2] and len(rec.references) == 3
    assert sched.store.load_arrays(ep.id)["frames"].shape[0] == ep.length + 1


def test_neo_episode_through_the_bridge_on_loopback(tmp_path):
    from envs.config import BackendConfig, EnvConfig
    from envs.neo.bridge import start_bridge

    token = uuid.uuid4().hex
    bridge = start_bridge(token, EnvConfig(image_size=S, max_steps=12), BackendConfig(name="neo:r1"), robot_id="r1")
    try:
        cfg, sched = setup_store(tmp_path, f"backend.port={bridge.port}", f"backend.token={token}")
        assert run_one(sched, backend="sim", max_steps=4).backend == "sim"  # the same models on sim first
        rec = spy_backend(cfg, "neo:r1")
        ep = run_one(sched, backend="neo:r1", max_steps=8)
    finally:
        bridge.close()
    assert ep.backend == "neo:r1" and ep.length == 8 and ep.meta["failure_reason"] is None
    # one planner per backend: each holds its own backend's limits and workspace check
    import workers.episode

    assert sorted(key[-1] for key in workers.episode._policies) == ["neo:r1", "sim"]
    sent = np.concatenate(rec.sent)  # (8, 16): what the policy sent to the NEO client
    assert np.isfinite(sent).all() and (sent >= robot.ACTION_LOW).all() and (sent <= robot.ACTION_HIGH).all()
    cands = assert_candidates_recorded(sched, ep, plans=2)
    assert sum(c.chosen for c in cands) == 2


# ------------------------------------------------------------------ failures are recorded, not crashes


def test_no_acceptable_candidate_is_a_recorded_failure(tmp_path):
    cfg, sched = setup_store(tmp_path, "policy.min_success_prob=1.0")
    rec = spy_backend(cfg, "sim")
    ep = run_one(sched)
    assert not ep.success and ep.length == 0
    assert ep.meta["failure_reason"].startswith("no acceptable candidate: success probability")
    cands = assert_candidates_recorded(sched, ep, plans=1, rounds=1 + cfg.policy.resample_rounds)
    assert not any(c.chosen for c in cands) and all("success probability" in c.rejected_reason for c in cands)
    assert rec.sent == []


def test_nan_from_a_registered_model_never_reaches_the_backend(tmp_path):
    cfg, sched = setup_store(tmp_path, nan_idm=True)
    rec = spy_backend(cfg, "sim")
    ep = run_one(sched)
    assert not ep.success and ep.length == 0 and rec.sent == []
    assert ep.meta["failure_reason"] == "no acceptable candidate: non-finite actions"
    cands = assert_candidates_recorded(sched, ep, plans=1, rounds=1 + cfg.policy.resample_rounds)
    assert all(c.rejected_reason == "non-finite actions" and not c.chosen for c in cands)
    assert sched.store.load_arrays(ep.id)["actions"].shape == (0, 16)


@pytest.mark.parametrize("failure", ["bridge", "time_limit"])
def test_an_episode_that_breaks_off_keeps_what_ran_with_the_failed_run(tmp_path, failure):
    """A link that drops (or the task's soft time limit) on the second chunk fails the run with the error,
    writes no episode (nothing trains on an infrastructure failure or counts it as the policy's), and keeps the
    attempt for inspection: the failed run's `result` points at its arrays and at both planning steps'
    candidates and videos."""
    from celery.exceptions import SoftTimeLimitExceeded

    from envs.errors import BridgeError

    cfg, sched = setup_store(tmp_path)
    rec = spy_backend(cfg, "sim")
    exc = BridgeError("the link to the NEO bridge is down: connection lost") if failure == "bridge" \
        else SoftTimeLimitExceeded()

    def step(actions, _real=rec.step):
        if len(rec.sent) == 1:  # the second chunk: the link drops, or the time is up
            raise exc
        return _real(actions)

    rec.step = step
    [run_id] = sched.enqueue({"policy": "imagine_then_act", "family": "pick", "seed": 3})
    [row] = sched.wait([run_id], timeout=60)
    assert row.state == "failed"
    assert row.error == ("BridgeError: the link to the NEO bridge is down: connection lost" if failure == "bridge"
                         else f"time limit of {cfg.broker.soft_time_limit_s}s exceeded")
    assert sched.store.episodes(limit=None) == []
    partial = row.result["partial"]
    assert partial["length"] == H and partial["failure_reason"].startswith(f"aborted: {type(exc).__name__}")
    arrays = sched.store.artifacts.get_arrays(partial["arrays_uri"], partial["arrays_sha256"])
    assert arrays["frames"].shape == (H + 1, S, S, 3) and arrays["actions"].shape == (H, 16)
    np.testing.assert_allclose(arrays["actions"], rec.sent[0])  # what ran before the drop
    assert [p["t"] for p in partial["plans"]] == [0, H]  # the step whose chunk never arrived is there too
    for plan in partial["plans"]:
        assert [c["index"] for c in plan["candidates"]] == list(range(N))
        assert sum(c["chosen"] for c in plan["candidates"]) == 1
        videos = sched.store.artifacts.get_arrays(plan["videos_uri"], plan["videos_sha256"])["videos"]
        assert videos.shape == (N, 5, S, S, 3)
    assert set(partial["models"]) == {"world_model", "idm"}  # the versions' ids it planned with
