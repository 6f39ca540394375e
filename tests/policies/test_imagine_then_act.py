"""Imagine-then-act with tiny real models driving a real backend: the loop on `sim` and on `neo` (bridge on
loopback), limit-violating and NaN candidates never executed, and a hold (not a crash) when nothing is
acceptable.

Faults are injected with small, clearly named test doubles that wrap the real models (`FaultyIDM`,
`NaNWorldModel`, `FixedSuccessWorldModel`); the policy, the feasibility checker and the backends are real.
Every backend is wrapped in `RecordingBackend`, which keeps each chunk before the backend's safety filter
sees it, so "nothing outside the limits reached the backend" is checked on what the policy sent.
"""
from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import torch

from envs import robot
from envs.backend import make_backend
from envs.config import BackendConfig
from envs.tasks import sample_task
from flywheel.compose import compose, to_object
from flywheel.evaluation.feasibility import default_checker
from policies.errors import PolicyError
from policies.idm import InverseDynamicsModel
from policies.imagine_then_act import (
    CONSENSUS_SCALE,
    LIMIT_PROJECTION,
    ImagineThenActPolicy,
    consensus,
    frame_to_tensor,
)
from policies.world_model import WorldModel

torch.set_num_threads(1)
S = 32  # image side of env frames and of both models here
N = 2  # candidates per planning step

TINY = [
    f"env.image_size={S}", "env.max_steps=12",
    f"world_model.image_size={S}", "world_model.num_frames=5", "world_model.num_layers=1", "world_model.ffn_dim=64",
    "world_model.text_layers=1", "world_model.text_vocab_size=256", "world_model.max_text_tokens=16",
    "world_model.success_hidden=16",
    f"idm.image_size={S}", "idm.window=4", "idm.cnn_channels=8", "idm.feature_dim=32", "idm.hidden_dim=32",
    "idm.head_layers=1", "idm.head_heads=2", "idm.noise_samples=2", "idm.flow_steps=2", "idm.proprio_passes=1",
    f"policy.n_candidates={N}", "policy.imagine_frames=5", "policy.horizon=4", "policy.sampling_steps=2",
]


def tiny_config(tmp_path, *extra: str) -> Any:
    return to_object(compose([f"data_dir={tmp_path}", *TINY, *extra]))


def tiny_models(cfg: Any) -> tuple[WorldModel, InverseDynamicsModel]:
    """An untrained tiny world model, and an untrained tiny IDM whose action statistics sit at the home
    pose (so its extractions are small, feasible motions: the stand-in for a trained IDM)."""
    torch.manual_seed(0)
    wm = WorldModel(cfg.world_model).eval()
    idm = InverseDynamicsModel(cfg.idm).eval()
    g = torch.Generator().manual_seed(0)
    home = torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32)
    idm.fit_normalization(home + 1e-3 * torch.randn(64, 16, generator=g),
                          torch.cat([home, torch.zeros(16)]) + 1e-3 * torch.randn(64, 32, generator=g))
    return wm, idm


# ------------------------------------------------------------------ test doubles (fault injection)
from _doubles import RecordingBackend


class FaultyIDM:
    """The real IDM, with candidate `i`'s extraction replaced per `faults[i]`: "nan" (all NaN), "over"
    (1 rad beyond the upper joint limits), "near" (inside the projection margin above the limits), "jump"
    (a step faster than the safety filter's velocity limit)."""

    def __init__(self, idm: InverseDynamicsModel, faults: dict[int, str], n: int = N) -> None:
        self.idm, self.faults, self.n, self.calls = idm, faults, n, 0

    def extract(self, video: torch.Tensor, proprio0: torch.Tensor, seed: int = 0) -> Any:
        index = self.calls % self.n  # the policy extracts candidates 0..N-1 in order
        self.calls += 1
        ext = self.idm.extract(video, proprio0, seed=seed)
        fault = self.faults.get(index)
        high = torch.as_tensor(robot.ACTION_HIGH, dtype=torch.float32)
        if fault == "nan":
            ext.actions[:] = float("nan")
        elif fault == "over":
            ext.actions[:] = high + 1.0
        elif fault == "near":
            ext.actions[:] = high + 0.5 * LIMIT_PROJECTION
        elif fault == "jump":  # hold still, but joint 0 jumps 0.3 rad at once (faster than 2.5 rad/s)
            ext.actions[:] = proprio0[:16]
            ext.actions[:, 0] -= 0.3
        return ext


class FixedSuccessWorldModel:
    """The real world model, with the success head's probabilities replaced by `probs` (N,)."""

    def __init__(self, wm: WorldModel, probs: list[float]) -> None:
        self.wm, self.probs = wm, probs

    def success_probs(self, videos: torch.Tensor, caption: str) -> torch.Tensor:
        return torch.tensor(self.probs[: len(videos)])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wm, name)


class NaNWorldModel:
    """The real world model, whose imagined futures (every frame after the start) are NaN."""

    def __init__(self, wm: WorldModel) -> None:
        self.wm = wm

    def imagine(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        videos = self.wm.imagine(*args, **kwargs)
        videos[:, 1:] = float("nan")
        return videos

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wm, name)


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Any:
    return tiny_config(tmp_path_factory.mktemp("itoa"))


@pytest.fixture(scope="module")
def models(cfg) -> tuple[WorldModel, InverseDynamicsModel]:
    return tiny_models(cfg)


@pytest.fixture(scope="module")
def checker():
    return default_checker(0.1)


@pytest.fixture(scope="module")
def sim(cfg):
    backend = make_backend("sim", cfg.backend, cfg.env)
    yield backend
    backend.close()


def make(cfg: Any, wm: Any, idm: Any, checker: Any, backend: Any, seed: int = 0) -> ImagineThenActPolicy:
    return ImagineThenActPolicy(cfg, world_model=wm, idm=idm, feasibility=checker.check,
                                action_low=backend.action_low, action_high=backend.action_high, seed=seed)


def rollout(policy: ImagineThenActPolicy, backend: Any, seed: int, max_plans: int = 3) -> tuple[list, Any]:
    """Reset on a pick task and run up to `max_plans` planning steps; returns (outputs, last obs)."""
    task = sample_task("pick", seed)
    obs = backend.reset(task=task, seed=seed)
    policy.reset(task.to_dict(), task.instruction, backend.scene_description())
    outs = []
    for _ in range(max_plans):
        out = policy.act(obs)
        outs.append(out)
        if out.hold:
            break
        res = backend.step(out.actions)
        obs = res.observations[-1]
        if res.done or res.success:
            break
    return outs, obs


def assert_within_limits(sent: list[np.ndarray], backend: Any) -> None:
    for chunk in sent:
        assert np.isfinite(chunk).all()
        assert (chunk >= backend.action_low - 1e-6).all() and (chunk <= backend.action_high + 1e-6).all()


# ------------------------------------------------------------------ the loop on both backends


def check_loop(cfg, models, checker, backend) -> None:
    wm, idm = models
    rec = RecordingBackend(backend)
    outs, obs = rollout(make(cfg, wm, idm, checker, rec), rec, seed=3)
    assert len(outs) == 3 and not any(o.hold for o in outs)  # 12 env steps = 3 plans of H=4
    assert len(rec.sent) == 3 and all(c.shape == (cfg.policy.horizon, 16) for c in rec.sent)
    assert_within_limits(rec.sent, backend)
    for out in outs:
        cands = out.info["candidates"]
        assert [c["index"] for c in cands] == list(range(N))
        assert sum(c["chosen"] for c in cands) == 1
        assert all({"success", "feasibility", "idm_spread", "combined"} <= set(c["scores"]) for c in cands)
        chosen = next(c for c in cands if c["chosen"])
        assert chosen["scores"]["combined"] == max(c["scores"]["combined"] for c in cands)
        assert out.info["videos"].shape == (N, cfg.policy.imagine_frames, S, S, 3)
        assert out.info["videos"].dtype == np.uint8
    assert obs["rgb"].shape == (S, S, 3)  # the last observation came back from the backend


def test_full_loop_on_the_sim_backend(cfg, models, checker, sim):
    check_loop(cfg, models, checker, sim)


def test_full_loop_on_the_neo_backend_through_the_bridge(cfg, models, checker):
    from envs.neo.bridge import start_bridge

    token = uuid.uuid4().hex
    bridge = start_bridge(token, cfg.env, BackendConfig(name="neo:r1"), robot_id="r1")
    try:
        backend = make_backend("neo:r1", BackendConfig(name="neo:r1", port=bridge.port, token=token), cfg.env)
        try:
            check_loop(cfg, models, checker, backend)
        finally:
            backend.close()
    finally:
        bridge.close()


def test_replanning_is_deterministic_for_a_seed(cfg, models, checker, sim):
    wm, idm = models
    a = [o.actions for o in rollout(make(cfg, wm, idm, checker, sim, seed=5), sim, seed=4, max_plans=2)[0]]
    b = [o.actions for o in rollout(make(cfg, wm, idm, checker, sim, seed=5), sim, seed=4, max_plans=2)[0]]
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_sampling_churn_reaches_the_world_model_and_stays_seeded(tmp_path, cfg, models, checker, sim):
    """`policy.sampling_churn` is the churn every imagined batch is drawn with; a replan with it is as
    reproducible for a seed as without; a churn outside [0, 1] is one clear config error."""
    wm, idm = models
    churned = tiny_config(tmp_path, "policy.sampling_churn=0.5")
    seen = []
    imagine = wm.imagine

    def spy(*a, **kw):
        seen.append(kw.get("churn"))
        return imagine(*a, **kw)

    wm.imagine = spy
    try:
        a = [o.actions for o in rollout(make(churned, wm, idm, checker, sim, seed=5), sim, seed=4, max_plans=2)[0]]
        b = [o.actions for o in rollout(make(churned, wm, idm, checker, sim, seed=5), sim, seed=4, max_plans=2)[0]]
        assert seen and set(seen) == {0.5}
        seen.clear()
        plain = [o.actions for o in rollout(make(cfg, wm, idm, checker, sim, seed=5), sim, seed=4, max_plans=2)[0]]
    finally:
        del wm.imagine
    assert seen and set(seen) == {0.0}
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(plain) and not all(np.array_equal(x, y) for x, y in zip(a, plain))
    with pytest.raises(Exception, match="sampling_churn must be in"):
        tiny_config(tmp_path, "policy.sampling_churn=1.5")


# ------------------------------------------------------------------ rejection and holds


def test_a_limit_violating_candidate_is_never_executed(cfg, models, checker, sim):
    wm, idm = models
    rec = RecordingBackend(sim)
    # candidate 0 is what the success head likes best, but its actions are 1 rad beyond the limits
    policy = make(cfg, FixedSuccessWorldModel(wm, [0.99, 0.01]), FaultyIDM(idm, {0: "over"}), checker, rec)
    outs, _ = rollout(policy, rec, seed=3)
    assert len(rec.sent) == len(outs) == 3
    for out in outs:
        bad, good = out.info["candidates"]
        assert not bad["chosen"] and bad["rejected_reason"].startswith("joint limit violated")
        assert good["chosen"] and good["rejected_reason"] is None
        assert bad["scores"]["success"] > good["scores"]["success"]
    assert_within_limits(rec.sent, sim)


def test_targets_just_past_a_limit_are_projected_onto_it(cfg, models, checker, sim):
    wm, idm = models
    rec = RecordingBackend(sim)
    policy = make(cfg, FixedSuccessWorldModel(wm, [0.99, 0.01]), FaultyIDM(idm, {0: "near"}), checker, rec)
    out = policy.act(rec.reset(task=sample_task("pick", 3), seed=3))
    near = out.info["candidates"][0]
    assert near["rejected_reason"] is None or "limit" not in near["rejected_reason"]
    if near["chosen"]:  # it may still lose on feasibility (a jump to the limits); if chosen, it is clipped
        assert np.array_equal(out.actions, np.broadcast_to(sim.action_high, out.actions.shape))
    assert (out.actions <= sim.action_high).all()


def test_a_too_fast_chunk_is_slowed_to_what_the_safety_filter_accepts(tmp_path, models, checker, sim):
    cfg = tiny_config(tmp_path, "policy.min_feasibility=0.0")
    wm, idm = models
    rec = RecordingBackend(sim)  # the sim backend's filter is in "reject" mode: a too-fast step would raise
    outs, _ = rollout(make(cfg, wm, FaultyIDM(idm, {0: "jump", 1: "jump"}), checker, rec), rec, seed=3)
    assert len(rec.sent) == 3 and outs[0].info["candidates"][0]["scores"]["feasibility"] < 1.0
    max_step = cfg.backend.safety.max_joint_velocity / cfg.env.control_hz
    q0 = np.asarray(robot.HOME_QPOS, np.float32)
    first = rec.sent[0]
    assert max_step * 0.99 < q0[0] - first[0, 0] <= max_step  # shortened to the limit...
    assert np.isclose(first[1, 0], q0[0] - 0.3, atol=1e-5)  # ...and the target reached one step later
    steps = np.abs(np.diff(np.concatenate([q0[None], *rec.sent]), axis=0))
    assert steps.max() <= max_step


def test_the_next_chunk_starts_from_the_backends_reference(cfg, models, checker, sim):
    """After a watchdog hold the robot holds where it was, not at the planner's last target: with the backend's
    reference given (`set_reference`, as the episode runner does before each plan) the next chunk starts within
    one rate-limited step of it. None or a broken pose keeps the planner's own reference."""
    wm, idm = models
    policy = make(cfg, wm, idm, checker, sim)
    q0 = np.asarray(robot.HOME_QPOS, np.float64)
    proprio = np.concatenate([q0, np.zeros(16)])
    stale, held = q0.copy(), q0.copy()
    stale[0] -= 0.5  # where the planner last sent the arm
    held[0] -= 0.2  # where it held when the commands stopped
    want = np.repeat(stale[None] - 0.1, 2, axis=0)  # (H, 16): on past the stale target
    policy.last_target = stale.copy()
    for bad in (None, np.full(16, np.nan), np.zeros(3)):
        policy.set_reference(bad)
        np.testing.assert_array_equal(policy.last_target, stale)
    policy.set_reference(held.astype(np.float32))
    first = policy._rate_limited(want, proprio)[0]
    assert np.abs(first - held).max() <= policy.max_step + 1e-6  # the filter, reset to `held`, accepts it
    policy.last_target = stale.copy()
    from_stale = policy._rate_limited(want, proprio)[0]
    assert np.abs(from_stale - held).max() > policy.max_step  # the chunk a stale reference gives: refused


def test_a_nan_candidate_is_rejected_and_the_finite_one_runs(cfg, models, checker, sim):
    wm, idm = models
    rec = RecordingBackend(sim)
    policy = make(cfg, FixedSuccessWorldModel(wm, [0.99, 0.01]), FaultyIDM(idm, {0: "nan"}), checker, rec)
    outs, _ = rollout(policy, rec, seed=6)
    assert len(rec.sent) == 3
    for out in outs:
        bad, good = out.info["candidates"]
        assert bad["rejected_reason"] == "non-finite actions" and not bad["chosen"]
        assert good["chosen"]
    assert_within_limits(rec.sent, sim)


def test_all_nan_extractions_hold_with_a_reason(cfg, models, checker, sim):
    wm, idm = models
    rec = RecordingBackend(sim)
    outs, _ = rollout(make(cfg, wm, FaultyIDM(idm, {0: "nan", 1: "nan"}), checker, rec), rec, seed=3)
    [out] = outs
    assert out.hold and out.actions.shape == (0, 16)
    assert out.failure_reason == "no acceptable candidate: non-finite actions"
    assert all(c["rejected_reason"] == "non-finite actions" and not c["chosen"] for c in out.info["candidates"])
    assert rec.sent == []


def test_nan_videos_from_the_world_model_never_reach_the_backend(cfg, models, checker, sim):
    wm, idm = models
    rec = RecordingBackend(sim)
    outs, _ = rollout(make(cfg, NaNWorldModel(wm), idm, checker, rec), rec, seed=3)
    [out] = outs
    assert out.hold and "non-finite" in out.failure_reason
    assert rec.sent == []
    assert out.info["videos"].dtype == np.uint8  # what is logged is still a valid video
    for c in out.info["candidates"]:  # NaN scores are logged as null (JSON-safe in PostgreSQL too)
        assert all(v is None or np.isfinite(v) for v in c["scores"].values())


def test_no_acceptable_candidate_is_a_hold_not_a_crash(tmp_path, models, checker, sim):
    cfg = tiny_config(tmp_path, "policy.min_success_prob=1.0")
    wm, idm = models
    rec = RecordingBackend(sim)
    outs, _ = rollout(make(cfg, wm, idm, checker, rec), rec, seed=3)
    [out] = outs
    assert out.hold and out.failure_reason.startswith("no acceptable candidate: success probability")
    rounds = 1 + cfg.policy.resample_rounds  # rejection sampling tried fresh batches before holding
    assert rounds > 1 and out.info["timings"]["rounds"] == rounds
    assert rec.sent == [] and len(out.info["candidates"]) == N * rounds == len(out.info["videos"])
    assert [c["index"] for c in out.info["candidates"]] == list(range(N * rounds))


class FirstBatchBadWorldModel:
    """The real world model, but the first imagine call of each planning step returns NaN videos."""

    def __init__(self, wm: WorldModel) -> None:
        self.wm, self.cfg, self.calls = wm, wm.cfg, 0

    def imagine(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        out = self.wm.imagine(*args, **kwargs)
        return torch.full_like(out, float("nan")) if self.calls == 1 else out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wm, name)


def test_rejection_sampling_draws_a_fresh_batch_when_none_is_acceptable(cfg, models, checker, sim):
    wm, idm = models
    rec = RecordingBackend(sim)
    bad = FirstBatchBadWorldModel(wm)
    outs, _ = rollout(make(cfg, bad, idm, checker, rec), rec, seed=3, max_plans=1)
    [out] = outs
    cands = out.info["candidates"]
    assert not out.hold and bad.calls == 2 and out.info["timings"]["rounds"] == 2
    assert all("non-finite" in c["rejected_reason"] for c in cands[:N])  # the first batch, all rejected
    chosen = [c["index"] for c in cands if c["chosen"]]
    assert len(chosen) == 1 and chosen[0] >= N  # one choice, from the second batch
    assert len(rec.sent) == 1 and np.isfinite(rec.sent[0]).all()


def test_a_candidate_leaving_the_workspace_is_never_executed(tmp_path, models, checker, sim):
    cfg = tiny_config(tmp_path, "policy.resample_rounds=0")
    wm, idm = models
    rec = RecordingBackend(sim)
    seen = []

    def nowhere(targets: np.ndarray) -> np.ndarray:  # a workspace no target is inside
        seen.append(np.array(targets))
        return np.zeros(len(targets), bool)

    policy = ImagineThenActPolicy(cfg, world_model=wm, idm=idm, feasibility=checker.check,
                                  action_low=rec.action_low, action_high=rec.action_high, workspace=nowhere)
    outs, _ = rollout(policy, rec, seed=3, max_plans=1)
    [out] = outs
    assert out.hold and "leaves the workspace at step 0" in out.failure_reason and rec.sent == []
    assert len(seen) == N and all(len(t) == cfg.policy.horizon for t in seen)  # the chunk that would be sent
    # the real check (the sim backend's safety filter's) passes the home pose, refuses a hand under the table
    ws = sim.safety.workspace
    from envs import robot
    assert ws(robot.HOME_QPOS[None]).all()
    low = robot.HOME_QPOS.copy()
    low[robot.ARM_SLICE["left"]] = [-0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]  # arm hanging straight down
    assert not ws(low[None]).any()


def test_a_policy_without_models_is_a_clear_error(cfg):
    with pytest.raises(PolicyError, match="world model and an IDM"):
        ImagineThenActPolicy(cfg)


# ------------------------------------------------------------------ context frames and consistency


class RecordingWorldModel:
    """The real world model; keeps the start frames of every `imagine` call."""

    def __init__(self, wm: WorldModel) -> None:
        self.wm, self.starts = wm, []

    def imagine(self, frames: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.starts.append(torch.as_tensor(frames).clone())
        return self.wm.imagine(frames, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wm, name)


def test_replanning_imagines_from_the_last_observed_frames(tmp_path, checker, sim):
    from policies.imagine_then_act import frame_to_tensor

    cfg = tiny_config(tmp_path, "world_model.cond_frames=2")  # a world model trained on 2 start frames
    wm, idm = tiny_models(cfg)
    rec_wm = RecordingWorldModel(wm)
    policy = make(cfg, rec_wm, idm, checker, sim)
    assert policy.context == 2
    task = sample_task("pick", 3)
    obs = sim.reset(task=task, seed=3)
    policy.reset(task.to_dict(), task.instruction, sim.scene_description())
    first = policy.act(obs)
    res = sim.step(first.actions)
    for o in res.observations[:-1]:  # what the episode runner does between plans
        policy.observe(o)
    second = policy.act(res.observations[-1])
    s0, s1 = rec_wm.starts
    assert s0.shape == s1.shape == (2, 3, S, S)
    assert torch.equal(s0[0], s0[1]) and torch.equal(s0[1], frame_to_tensor(obs["rgb"]))  # held at the start
    assert torch.equal(s1[0], frame_to_tensor(res.observations[-2]["rgb"]))  # the frame before the current
    assert torch.equal(s1[1], frame_to_tensor(res.observations[-1]["rgb"]))
    # the IDM extracts from the current frame on: 4 of the 5 imagined frames, 3 actions (H=4 is capped)
    assert second.info["videos"].shape == (N, cfg.policy.imagine_frames - 1, S, S, 3)
    assert second.actions.shape == (cfg.policy.imagine_frames - 2, 16)
    # a runner that does not observe the steps inside the chunk: no stale frame H steps back as context
    res = sim.step(second.actions)
    policy.act(res.observations[-1])
    current = frame_to_tensor(res.observations[-1]["rgb"])
    assert torch.equal(rec_wm.starts[2][0], current) and torch.equal(rec_wm.starts[2][1], current)
    with pytest.raises(PolicyError, match="context_frames"):
        make(tiny_config(tmp_path, "policy.context_frames=5"), wm, idm, checker, sim)


def test_consistency_scores_each_candidate_by_the_action_conditioned_prediction(tmp_path, models, checker, sim):
    cfg = tiny_config(tmp_path, "policy.consistency=true", "+policy.score_weights.consistency=1.0")
    wm, idm = models
    out = make(cfg, wm, idm, checker, sim).act(sim.reset(task=sample_task("pick", 3), seed=3))
    cands = out.info["candidates"]
    ok = [c for c in cands if c["rejected_reason"] is None]
    assert ok, "no acceptable candidate to score"
    for c in ok:
        assert 0.0 <= c["scores"]["consistency"] <= 1.0 and np.isfinite(c["scores"]["consistency_psnr"])
        assert c["scores"]["consistency"] == pytest.approx(min(max(c["scores"]["consistency_psnr"] / 40, 0), 1))
        assert c["scores"]["combined"] == pytest.approx(c["scores"]["consistency"])
    chosen = next(c for c in cands if c["chosen"])
    assert chosen["scores"]["consistency"] == max(c["scores"]["consistency"] for c in ok)


def test_imagine_plan_draws_the_action_heads_plan(tmp_path, models, checker, sim):
    """`policy.imagine_plan`: the planner imagines with plan=True (the futures are the world model's
    prediction under its action head's plan); a world model without the head is refused at construction."""
    cfg = tiny_config(tmp_path, "policy.imagine_plan=true", "world_model.imagine_action_loss=1.0",
                      "world_model.num_layers=2")
    torch.manual_seed(0)
    wm = WorldModel(cfg.world_model).eval()
    with torch.no_grad():  # untrained, the zero-initialised output and action maps would only copy the frame
        for param in wm.transformer.parameters():
            if not param.any():
                param.normal_(std=0.05)
    _, idm = models
    obs = sim.reset(task=sample_task("pick", 3), seed=3)
    policy = make(cfg, wm, idm, checker, sim)
    out = policy.act(obs)
    start = frame_to_tensor(obs["rgb"])
    seed = policy.seed * 100_003  # the first planning step's first batch
    pose = torch.from_numpy(obs["proprio"][:16].astype(np.float32))  # the measured joint positions
    plan = wm.plan_actions(start, policy.caption, pose, n=N, seed=seed, num_frames=cfg.policy.imagine_frames)
    want = wm.predict_many(start, plan, policy.caption, seed=seed, steps=cfg.policy.sampling_steps,
                           guidance=cfg.policy.guidance)
    got = out.info["videos"][:N].astype(np.float32)
    assert np.abs(got - want.permute(0, 1, 3, 4, 2).numpy() * 255).max() <= 1.0
    plain = wm.imagine(start, policy.caption, n=N, steps=cfg.policy.sampling_steps, guidance=cfg.policy.guidance,
                       seed=seed, num_frames=cfg.policy.imagine_frames)
    assert np.abs(got - plain.permute(0, 1, 3, 4, 2).numpy() * 255).max() > 5.0
    with pytest.raises(PolicyError, match="action head"):
        make(tiny_config(tmp_path, "policy.imagine_plan=true"), *models, checker, sim)


class ScriptedJointsWorldModel:
    """A real tiny world model with joint channels whose imagined joints are replaced: candidate 0 moves joint 0
    by `step` rad per frame from the measured pose, candidate 1's joints are NaN."""

    def __init__(self, wm: WorldModel, step: float = 0.02) -> None:
        self.wm, self.cfg, self.step, self.success_head = wm, wm.cfg, step, wm.success_head

    def imagine_joints(self, frames, caption, n=4, pose=None, **kw):
        videos, joints = self.wm.imagine_joints(frames, caption, n=n, pose=pose, **kw)
        assert torch.allclose(joints[:, 0], pose.expand(n, -1), atol=1e-5)  # the planner gave the measured pose
        joints = pose.expand(n, joints.shape[1], -1).clone()
        joints[0, :, 0] += self.step * torch.arange(joints.shape[1])
        joints[1:] = float("nan")
        return videos, joints

    def success_probs(self, videos, caption):
        return self.wm.success_probs(videos, caption)


def test_the_idm_reads_the_imagined_joints_of_a_world_model_that_imagines_them(tmp_path, models, checker, sim):
    """`world_model.imagine_joints` with `policy.extract_from=auto`: each candidate's actions are the IDM's reading
    of its imagined joints (`extract_joints`), NaN joints are rejected, and the chunk sent is the finite
    candidate's; `extract_from=frames` reads the frames instead; `joints` without joint channels is refused."""
    cfg = tiny_config(tmp_path, "world_model.imagine_joints=true")
    torch.manual_seed(0)
    wm = WorldModel(cfg.world_model).eval()
    home = torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32)
    wm.fit_joint_stats(home + 0.1 * torch.randn(64, 16))
    _, idm = models
    scripted = ScriptedJointsWorldModel(wm)
    rec = RecordingBackend(sim)
    obs = rec.reset(task=sample_task("pick", 3), seed=3)
    policy = make(cfg, scripted, idm, checker, rec)
    out = policy.act(obs)
    cands = out.info["candidates"]
    assert cands[0]["chosen"] and all("non-finite" in c["rejected_reason"] for c in cands[1:N])
    want = idm.extract_joints(scripted.imagine_joints(frame_to_tensor(obs["rgb"]), policy.caption, n=N,
                                                      pose=torch.from_numpy(obs["proprio"][:16].copy()),
                                                      num_frames=cfg.policy.imagine_frames)[1][0],
                              torch.from_numpy(obs["proprio"])).actions.numpy()
    assert np.allclose(out.actions, policy._rate_limited(want[: cfg.policy.horizon], obs["proprio"]), atol=1e-6)
    assert out.actions[-1, 0] - obs["proprio"][0] > 0.05  # joint 0 follows the imagined ramp (4 x 0.02 rad)
    frames_cfg = tiny_config(tmp_path, "world_model.imagine_joints=true", "policy.extract_from=frames")
    framed = make(frames_cfg, scripted, idm, checker, rec).act(obs)
    assert not np.allclose(framed.actions, out.actions)  # the frames' reading, not the joints'
    with pytest.raises(PolicyError, match="imagines the joints"):
        make(tiny_config(tmp_path, "policy.extract_from=joints"), *models, checker, sim)


def test_imagined_joints_past_a_limit_are_rejected_or_read_at_the_limit(tmp_path, models, checker, sim):
    """A candidate whose imagined joint 0 runs past its upper limit is rejected for the limit; with
    `policy.clamp_imagined_joints` its joints are read as stopping at the limit, and the chunk sent stays inside
    the limits."""
    torch.manual_seed(0)
    home = torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32)
    outs = {}
    for clamp in (False, True):
        cfg = tiny_config(tmp_path, "world_model.imagine_joints=true", f"policy.clamp_imagined_joints={clamp}",
                          "policy.resample_rounds=0")
        wm = WorldModel(cfg.world_model).eval()
        wm.fit_joint_stats(home + 0.1 * torch.randn(64, 16))
        rec = RecordingBackend(sim)
        obs = rec.reset(task=sample_task("pick", 3), seed=3)
        high = float(rec.action_high[0])
        step = 1.5 * (high - float(obs["proprio"][0])) / (cfg.policy.imagine_frames - 1) + 0.01  # ends well past it
        outs[clamp] = make(cfg, ScriptedJointsWorldModel(wm, step=step), models[1], checker, rec).act(obs)
        assert outs[clamp].info["candidates"][0]["chosen"] is clamp
    assert outs[False].hold and outs[False].info["candidates"][0]["rejected_reason"].startswith("joint limit violated")
    got = outs[True].actions
    assert not outs[True].hold and (got <= sim.action_high + 1e-9).all() and (got >= sim.action_low - 1e-9).all()
    assert got[-1, 0] > float(obs["proprio"][0])  # it still moves joint 0 towards the limit


def test_consensus_scores_the_chunk_nearest_the_others_highest():
    """exp(-d / scale), d the mean absolute distance to the other finite chunks; a lone chunk scores 1, a
    non-finite one 0 and is left out of the others' distances."""
    a, b, far = np.zeros((4, 16)), np.full((4, 16), 0.02), np.full((4, 16), -0.3)
    nan = np.full((4, 16), np.nan)
    got = consensus([a, b, far, nan])
    assert got[3] == 0.0
    assert np.isclose(got[0], np.exp(-(0.02 + 0.3) / 2 / CONSENSUS_SCALE))
    assert np.isclose(got[2], np.exp(-(0.3 + 0.32) / 2 / CONSENSUS_SCALE))
    assert got[0] > got[1] > got[2]  # a sits between b and far: the medoid
    assert consensus([a]) == [1.0] and consensus([a, nan]) == [1.0, 0.0]


class FannedJointsWorldModel(ScriptedJointsWorldModel):
    """Candidate k moves joint 0 by `steps[k]` rad per frame from the measured pose."""

    def __init__(self, wm: WorldModel, steps: list[float]) -> None:
        super().__init__(wm)
        self.steps = steps

    def imagine_joints(self, frames, caption, n=4, pose=None, **kw):
        videos, joints = self.wm.imagine_joints(frames, caption, n=n, pose=pose, **kw)
        joints = pose.expand(n, joints.shape[1], -1).clone()
        joints[:, :, 0] += torch.tensor(self.steps)[:, None] * torch.arange(joints.shape[1])
        return videos, joints


def test_with_a_consensus_weight_the_planner_executes_the_medoid(tmp_path, models, checker, sim):
    """Every candidate logs its consensus; weighted alone, the candidate nearest the others is executed, not the
    outlier."""
    torch.manual_seed(0)
    home = torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32)
    chosen = {}
    for weight in (1.0, -1.0):
        cfg = tiny_config(tmp_path, "world_model.imagine_joints=true", "policy.n_candidates=3",
                          f"+policy.score_weights.consensus={weight}")
        wm = WorldModel(cfg.world_model).eval()
        wm.fit_joint_stats(home + 0.1 * torch.randn(64, 16))
        obs = sim.reset(task=sample_task("pick", 3), seed=3)
        out = make(cfg, FannedJointsWorldModel(wm, [-0.03, 0.01, 0.012]), models[1], checker, sim).act(obs)
        cands = out.info["candidates"]
        assert all(0.0 < c["scores"]["consensus"] <= 1.0 for c in cands)
        assert cands[1]["scores"]["consensus"] > cands[2]["scores"]["consensus"] > cands[0]["scores"]["consensus"]
        chosen[weight] = next(c["index"] for c in cands if c["chosen"])
    assert chosen == {1.0: 1, -1.0: 0}  # the medoid; negated, the outlier


def test_goal_progress_scores_the_candidate_nearest_the_goal_of_the_phase(tmp_path, models, checker, sim):
    """With a goal-conditioned world model every candidate logs `goal_progress`, exp(-d / GOAL_SCALE) of its last
    executed target's arm distance to the goal it works toward: the grasp until the goals' gripper is commanded
    closed, then the carry (the grasp again while the carry is unknown). Weighted alone, it picks the candidate
    heading for that goal."""
    torch.manual_seed(0)
    home = torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32)
    cfg = tiny_config(tmp_path, "world_model.imagine_joints=true", "world_model.goal_joints=true",
                      "world_model.goal_count=2", "policy.n_candidates=3", "+policy.score_weights.goal_progress=1.0")
    wm = WorldModel(cfg.world_model).eval()
    wm.fit_joint_stats(home + 0.1 * torch.randn(64, 16))
    task = sample_task("pick", 3)
    obs = sim.reset(task=task, seed=3)
    policy = make(cfg, FannedJointsWorldModel(wm, [-0.03, 0.01, 0.03]), models[1], checker, sim)
    policy.reset(task.to_dict(), task.instruction, sim.scene_description())
    q = obs["proprio"][:16].astype(np.float64)
    goal = np.stack([q, q])
    goal[0, 0] += 0.2  # the grasp: joint 0 up, gripper open
    goal[1, 0] -= 0.2  # the carry: joint 0 down, the left gripper closed
    goal[0, 14], goal[1, 14] = 0.045, 0.0
    policy.goal = goal
    chosen = {}
    for phase, grip in ((0, 0.045), (1, 0.0)):
        policy.last_target = np.r_[q[:14], grip, q[15]]
        assert policy.goal_phase(obs["proprio"]) == phase
        info = policy.act(obs).info
        cands = info["candidates"]
        assert info["goal_phase"] == ("grasp", "carry")[phase]
        assert all(0.0 < c["scores"]["goal_progress"] <= 1.0 for c in cands)
        assert (cands[2 - 2 * phase]["scores"]["goal_progress"] > cands[1]["scores"]["goal_progress"]
                > cands[2 * phase]["scores"]["goal_progress"])
        chosen[phase] = next(c["index"] for c in cands if c["chosen"])
    assert chosen == {0: 2, 1: 0}  # up toward the grasp; once the gripper is commanded closed, down toward the carry
    policy.goal = np.stack([goal[0], np.full(16, np.nan)])  # carry unknown: the grasp stays the goal
    assert policy.goal_phase(obs["proprio"]) == 0


# ------------------------------------------------------------------ bad config and bad observations
@pytest.mark.parametrize("override, match", [
    ("policy.sampling_steps=0", "sampling_steps"),  # would return the starting noise as the future
    ("policy.min_feasibility=nan", "min_feasibility"),  # NaN would switch the threshold off
    ("policy.min_success_prob=1.5", "min_success_prob"),
    ("policy.guidance=inf", "guidance"),
    ("policy.expert_noise=-0.1", "expert_noise"),
    ("+policy.score_weights.feasability=1.0", "unknown score 'feasability'"),  # a typo
    ("+policy.score_weights.success=nan", "score_weights.success"),
    ("policy.caption_upsampler=sceen", "caption_upsampler"),
    ("policy.caption_upsampler=openai", "upsampler_url"),
    ("policy.imagine_frames=1", "imagine_frames"),
])
def test_a_bad_policy_config_is_one_clear_error(tmp_path, override, match):
    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        tiny_config(tmp_path, override)


@pytest.mark.parametrize("field, value, match", [
    ("proprio", lambda p: np.where(np.arange(p.size) == 3, np.nan, p), "proprio is non-finite at index 3"),
    ("proprio", lambda p: p[:5], "proprio has shape"),
    ("rgb", lambda r: r.astype(np.float32), "rgb must be a uint8"),
])
def test_a_bad_observation_holds_with_a_reason_and_imagines_nothing(cfg, models, checker, sim, field, value, match):
    wm, idm = models
    rec_wm = RecordingWorldModel(wm)
    policy = make(cfg, rec_wm, idm, checker, sim)
    task = sample_task("pick", 3)
    obs = sim.reset(task=task, seed=3)
    policy.reset(task.to_dict(), task.instruction, sim.scene_description())
    out = policy.act({**obs, field: value(np.asarray(obs[field]))})
    assert out.hold and out.actions.shape == (0, 16) and match in out.failure_reason
    assert rec_wm.starts == []  # nothing was imagined from it
    policy.act(obs)  # the next good observation is planned from
    assert len(rec_wm.starts) >= 1


def test_a_goal_conditioned_world_model_gets_the_grasp_goal_of_the_scene(tmp_path, models, checker, sim):
    """`world_model.goal_joints`: the planner computes the grasp goal from the scene at reset (`grasp_goal`) and
    hands it to every imagination (with `policy.goal_guidance`) and to the consistency prediction; it is in the
    policy's logs. A task without a goal imagines with none; a scene the goal cannot be computed from is one clear
    error at reset."""
    from envs.goals import task_goals

    cfg = tiny_config(tmp_path, "world_model.imagine_joints=true", "world_model.goal_joints=true",
                      "policy.consistency=true", "policy.goal_guidance=2.0")
    torch.manual_seed(0)
    wm = WorldModel(cfg.world_model).eval()
    wm.fit_joint_stats(torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32) + 0.1 * torch.randn(64, 16))
    seen: dict[str, list] = {"imagine": [], "predict": [], "guidance": []}
    imagine, predict = wm.imagine_joints, wm.predict_many
    wm.imagine_joints = lambda *a, **kw: (seen["imagine"].append(kw.get("goal")),
                                          seen["guidance"].append(kw.get("goal_guidance")), imagine(*a, **kw))[2]
    wm.predict_many = lambda *a, **kw: (seen["predict"].append(kw.get("goal")), predict(*a, **kw))[1]
    _, idm = models
    policy = make(cfg, wm, idm, checker, sim)
    task = sample_task("pick", 3)
    obs = sim.reset(task=task, seed=3)
    scene = sim.scene_description()
    policy.reset(task.to_dict(), task.instruction, scene)
    out = policy.act(obs)
    want = task_goals(scene, cfg.env.control_hz)
    assert seen["imagine"] and all(torch.equal(g, torch.from_numpy(want)) for g in seen["imagine"])
    assert seen["guidance"] == [2.0] * len(seen["imagine"])
    assert seen["predict"] and all(torch.equal(g, torch.from_numpy(want)) for g in seen["predict"])
    assert np.allclose(policy.logs()["grasp_goal"], want[0], atol=1e-4)
    assert np.allclose(policy.logs()["carry_goal"], want[1], atol=1e-4) and np.isfinite(out.actions).all()
    drawer = sample_task("drawer", 3)
    obs = sim.reset(task=drawer, seed=3)
    policy.reset(drawer.to_dict(), drawer.instruction, sim.scene_description())
    seen["imagine"].clear()
    policy.act(obs)
    assert seen["imagine"] == [None] * len(seen["imagine"]) and "grasp_goal" not in policy.logs()
    broken = dict(scene, objects=[{"name": "red cube"}])
    with pytest.raises(PolicyError, match="grasp goal"):
        policy.reset(task.to_dict(), task.instruction, broken)
    with pytest.raises(Exception, match="goal_guidance must be a finite number"):
        tiny_config(tmp_path, "policy.goal_guidance=-1")
    with pytest.raises(Exception, match="goal_guidance_spread must be a finite number"):
        tiny_config(tmp_path, "policy.goal_guidance_spread=-1")
    # a spread: candidate k's goal guidance is evenly spaced from goal_guidance on, one per future, each logged
    policy.pcfg.goal_guidance_spread = 1.0
    policy.pcfg.n_candidates = 3
    obs = sim.reset(task=task, seed=3)
    policy.reset(task.to_dict(), task.instruction, scene)
    seen["guidance"].clear()
    out = policy.act(obs)
    assert seen["guidance"] and all(list(g) == [2.0, 2.5, 3.0] for g in seen["guidance"])
    assert [c["goal_guidance"] for c in out.info["candidates"][:3]] == [2.0, 2.5, 3.0]
    policy.pcfg.n_candidates = 1
    assert policy.goal_guidances() == [2.0]
