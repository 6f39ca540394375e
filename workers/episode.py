"""Run one episode: a policy drives a backend until success, done, the step limit or a cancel.

`run_episode(cfg, payload, should_stop)` is what the `flywheel.run_episode` task calls. Policies come
from `policies.make_policy(name, cfg)`; the two that need no model (`scripted_expert`, `random`) have
small adapters here so workers run before (and without) the model code. Backends and policies are
built once per worker process and reused across tasks.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.errors import WorkerError
from workers.spec import EpisodePayload

log = logging.getLogger("workers.episode")


class Cancelled(Exception):
    """The run was cancelled (or taken over by the sweeper) while it ran."""


@dataclass
class Chunk:
    """What an adapter returns: an (H, 16) action chunk, or hold with a reason."""

    actions: np.ndarray
    hold: bool = False
    failure_reason: str | None = None


@dataclass
class EpisodeOutcome:
    """One finished episode: arrays for the artifact store and fields for the episode row."""

    frames: np.ndarray  # uint8 (T+1, H, W, 3)
    proprio: np.ndarray  # float32 (T+1, 32)
    actions: np.ndarray  # float32 (T, 16)
    success: bool
    reward: float
    task: dict[str, Any]
    instruction: str
    initial_state: dict[str, np.ndarray] | None
    failure_reason: str | None = None
    caption: str | None = None
    logs: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


# ------------------------------------------------------------------ policy adapters (no model needed)


class ScriptedExpertAdapter:
    """`envs.expert.ScriptedExpert` behind the policy interface; it reads the simulator, so sim only."""

    name = "scripted_expert"

    def __init__(self, backend: Any, noise: float, seed: int) -> None:
        env = getattr(backend, "env", None)
        if env is None:
            raise WorkerError("policy 'scripted_expert' needs the simulator's state: use backend 'sim'")
        from envs.expert import ScriptedExpert

        self.expert = ScriptedExpert(env, noise=noise, seed=seed)

    def reset(self, task: Any, instruction: str, scene: dict | None = None) -> None:
        self.expert.reset(task)

    def act(self, obs: dict[str, np.ndarray]) -> Chunk:
        return Chunk(np.asarray(self.expert.act(obs), np.float32)[None])  # (1, 16)

    def logs(self) -> dict[str, Any]:
        return {}


class RandomAdapter:
    """Small random joint moves around the current pose, within limits and the velocity filter."""

    name = "random"
    STEP_RAD = 0.08  # per control step: under the safety filter's velocity limit at 10 Hz

    def __init__(self, backend: Any, seed: int, horizon: int) -> None:
        self.low, self.high = np.asarray(backend.action_low), np.asarray(backend.action_high)
        self.rng = np.random.default_rng(seed)
        self.horizon = horizon

    def reset(self, task: Any, instruction: str, scene: dict | None = None) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> Chunk:
        dim = self.low.shape[0]
        q = np.clip(np.asarray(obs["proprio"], np.float32)[:dim], self.low, self.high)
        steps = self.rng.uniform(-self.STEP_RAD, self.STEP_RAD, size=(self.horizon, dim))
        chunk = np.clip(q + np.cumsum(steps, axis=0), self.low, self.high)  # (H, 16)
        return Chunk(chunk.astype(np.float32))

    def logs(self) -> dict[str, Any]:
        return {}


# ------------------------------------------------------------------ per-process caches

_backends: dict[str, Any] = {}
_policies: dict[tuple[str, str], Any] = {}


def get_backend(cfg: Any, name: str) -> Any:
    """The backend `name` of this process (built on first use, reused by later tasks)."""
    if name not in _backends:
        import dataclasses

        from envs.backend import make_backend

        bcfg = dataclasses.replace(cfg.backend, name=name)
        _backends[name] = make_backend(name, bcfg, cfg.env)
    return _backends[name]


def drop_backend(name: str) -> None:
    """Forget a backend after an error, so the next task starts from a fresh one."""
    backend = _backends.pop(name, None)
    if backend is not None:
        try:
            backend.close()
        except Exception:
            log.exception("closing backend %s", name)


def build_policy(cfg: Any, payload: EpisodePayload, backend: Any) -> Any:
    """The policy for this episode. Model-free policies get a fresh adapter; model policies come from
    `policies.make_policy` once per process and model versions (this is where imagine_then_act plugs in)."""
    name = payload.policy
    if name == "scripted_expert":
        return ScriptedExpertAdapter(backend, noise=cfg.policy.expert_noise, seed=payload.seed)
    if name == "random":
        return RandomAdapter(backend, seed=payload.seed, horizon=cfg.policy.horizon)
    key = (name, repr(sorted((payload.model or {}).items())))
    if key not in _policies:
        try:
            from policies.base import make_policy
        except ImportError as exc:
            raise WorkerError(f"policy {name!r} needs policies.make_policy, which is not available: {exc}") from None
        kwargs = {"model_versions": dict(payload.model)} if payload.model else {}
        from workers.runtime import full_config

        _policies[key] = make_policy(name, full_config(cfg), **kwargs)
    return _policies[key]


# ------------------------------------------------------------------ the episode loop


def resolve_task(payload: EpisodePayload) -> Any:
    """The `envs.tasks.TaskInstance` a payload names (the scheduler resolved it into `task`)."""
    from envs.tasks import TaskInstance

    if payload.task is None:
        raise WorkerError("episode payload has no task (the scheduler resolves every spec into one)")
    try:
        return TaskInstance.from_dict(payload.task)
    except Exception as exc:  # noqa: BLE001 - a bad dict from the broker
        raise WorkerError(f"episode payload has an invalid task: {exc}") from None


def _chunk_of(out: Any) -> Chunk:
    """Accept both our Chunk and `policies.base.PolicyOutput` (same field names)."""
    return Chunk(np.asarray(out.actions, np.float32).reshape(-1, 16) if len(out.actions) else np.zeros((0, 16), np.float32),
                 bool(getattr(out, "hold", False)), getattr(out, "failure_reason", None))


def run_episode(cfg: Any, payload: EpisodePayload, should_stop: Callable[[], bool] = lambda: False) -> EpisodeOutcome:
    """Run the policy on the backend for one episode; raises Cancelled when `should_stop()` turns true."""
    t0 = time.perf_counter()
    task = resolve_task(payload)
    backend = get_backend(cfg, payload.backend)
    max_steps = payload.max_steps or cfg.env.max_steps
    try:
        obs = backend.reset(task=task, seed=payload.seed)
        initial_state = backend.get_state() if payload.backend == "sim" else None
        scene = backend.scene_description()
        policy = build_policy(cfg, payload, backend)
        instruction = payload.instruction or task.instruction
        policy.reset(task.to_dict(), instruction, scene)
        t_reset = time.perf_counter()
        frames, proprio, actions = [obs["rgb"]], [obs["proprio"]], []
        success, reward, failure = False, 0.0, None
        while len(actions) < max_steps:
            if should_stop():
                raise Cancelled()
            out = _chunk_of(policy.act(obs))
            if out.hold or out.actions.shape[0] == 0:
                failure = out.failure_reason or "policy held still"
                break
            chunk = out.actions[: max_steps - len(actions)]  # (h, 16)
            res = backend.step(chunk)
            for o in res.observations:
                frames.append(o["rgb"])
                proprio.append(o["proprio"])
            actions.extend(chunk[: len(res.observations)])
            reward += float(res.info.get("reward", 0.0))
            success = bool(res.success)
            if res.observations:
                obs = res.observations[-1]
            if res.done or success or not res.observations:
                break
        logs = policy.logs() if hasattr(policy, "logs") else {}
    except Cancelled:
        raise
    except Exception:
        drop_backend(payload.backend)  # the next task gets a clean one
        raise
    t_end = time.perf_counter()
    return EpisodeOutcome(
        frames=np.stack(frames).astype(np.uint8),
        proprio=np.stack(proprio).astype(np.float32),
        actions=np.asarray(actions, np.float32).reshape(-1, 16),
        success=success, reward=reward, task=task.to_dict(), instruction=instruction,
        initial_state=initial_state, failure_reason=failure, logs=logs,
        timings={"reset_s": t_reset - t0, "rollout_s": t_end - t_reset, "total_s": t_end - t0},
    )
