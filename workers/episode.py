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

from envs.errors import SafetyViolation
from workers.errors import WorkerError
from workers.spec import EpisodePayload

log = logging.getLogger("workers.episode")


class Cancelled(Exception):
    """The run was cancelled (or taken over by the sweeper) while it ran."""


class EpisodeAborted(Exception):
    """The episode broke off part-way (a bridge that dropped, a model that raised): `outcome` is what ran
    until then (frames, actions, the planning steps' candidates and videos), `cause` the error. The episode
    body keeps the partial attempt for inspection and the run fails with the cause's message. `run_error` and
    `run_result` are what the ledger records for the failed run."""

    def __init__(self, outcome: EpisodeOutcome, cause: BaseException) -> None:
        self.outcome, self.cause = outcome, cause
        self.run_error = f"{type(cause).__name__}: {cause}"
        self.run_result: dict[str, Any] | None = None
        super().__init__(self.run_error)


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
    plans: list[dict[str, Any]] = field(default_factory=list)  # imagine-then-act planning steps
    model_ids: dict[str, int] = field(default_factory=dict)  # kind -> model_versions.id
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


# ------------------------------------------------------------------ per-process caches

_backends: dict[str, Any] = {}
_policies: dict[tuple[str, str, str], Any] = {}  # model policies, per (name, versions, backend)


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


def build_policy(cfg: Any, payload: EpisodePayload, backend: Any, store: Any = None) -> tuple[Any, dict[str, int]]:
    """The policy for this episode (from `policies.make_policy`) and the model-version ids it runs with.

    Model-free policies are built per episode (they are cheap and bound to the backend); model policies
    are cached per process and model versions, their models loaded once from the registry."""
    from policies.base import make_policy
    from workers.runtime import full_config

    full = full_config(cfg)
    name = payload.policy
    if name in ("scripted_expert", "play", "perturbed_expert", "recovery_expert"):
        return make_policy(name, full, env=getattr(backend, "env", None), state_fn=backend.get_state,
                           seed=payload.seed), {}
    if name == "random":
        return make_policy(name, full, action_low=backend.action_low, action_high=backend.action_high,
                           seed=payload.seed, chunk=cfg.policy.horizon), {}
    versions = dict(payload.model or {})
    ids: dict[str, int] = {}
    kwargs: dict[str, Any] = {}
    if name == "imagine_then_act":
        from flywheel.evaluation.feasibility import default_checker
        from workers.models import load_model

        if store is None or set(versions) < {"world_model", "idm"}:
            raise WorkerError("imagine_then_act needs a world model and an IDM version (enqueue resolves the champions)")
        (wm, ids["world_model"]), (idm, ids["idm"]) = (load_model(full, store, k, versions[k]) for k in ("world_model", "idm"))
        checker = default_checker(1.0 / cfg.env.control_hz)
        kwargs = {"world_model": wm, "idm": idm, "feasibility": checker.check,
                  "action_low": backend.action_low, "action_high": backend.action_high,
                  "workspace": getattr(getattr(backend, "safety", None), "workspace", None)}
    # versions are per store; the planner holds its backend's limits and workspace check, so one per backend
    key = (name, f"{full.db.url or full.data_path}:{sorted(versions.items())}", payload.backend)
    if key not in _policies:
        _policies[key] = make_policy(name, full, **kwargs)
    policy = _policies[key]
    policy.seed = payload.seed
    return policy, ids


# ------------------------------------------------------------------ the episode loop

_upsamplers: dict[tuple[str, str | None, str], Any] = {}


def caption_for(cfg: Any, instruction: str, scene: dict[str, Any]) -> str:
    """The detailed caption of `policy.caption_upsampler` for an episode (one upsampler per process)."""
    from policies.captions import make_upsampler

    key = (str(cfg.policy.caption_upsampler), getattr(cfg.policy, "upsampler_url", None),
           str(getattr(cfg.policy, "upsampler_model", "default")))
    if key not in _upsamplers:
        _upsamplers[key] = make_upsampler(*key)
    return _upsamplers[key].upsample(instruction, scene)


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
    """The (H, 16) chunk of a `policies.base.PolicyOutput` (empty when it holds)."""
    actions = np.asarray(out.actions, np.float32)
    if actions.size and (actions.ndim != 2 or actions.shape[1] != 16):
        raise WorkerError(f"the policy returned actions of shape {actions.shape}; a chunk must be (H, 16) joint "
                          f"targets (env.action_space=joint)")
    return Chunk(actions if actions.size else np.zeros((0, 16), np.float32),
                 bool(out.hold), out.failure_reason)


def run_episode(cfg: Any, payload: EpisodePayload, should_stop: Callable[[], bool] = lambda: False,
                store: Any = None, state: dict[str, np.ndarray] | None = None) -> EpisodeOutcome:
    """Run the policy on the backend for one episode (from a recorded `state` when given); raises
    Cancelled when `should_stop()` turns true, and EpisodeAborted (with what ran) when anything else breaks
    off an episode that had started."""
    t0 = time.perf_counter()
    task = resolve_task(payload)
    backend = get_backend(cfg, payload.backend)
    max_steps = payload.max_steps or cfg.env.max_steps
    frames: list[np.ndarray] = []
    proprio: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    plans: list[dict[str, Any]] = []  # per planning step: scored candidates and their videos
    instruction, caption, initial_state = payload.instruction or task.instruction, None, None
    model_ids: dict[str, int] = {}

    def outcome(**fields: Any) -> EpisodeOutcome:  # what ran so far, as arrays
        return EpisodeOutcome(
            frames=np.stack(frames).astype(np.uint8), proprio=np.stack(proprio).astype(np.float32),
            actions=np.asarray(actions, np.float32).reshape(-1, 16), task=task.to_dict(), instruction=instruction,
            initial_state=initial_state, caption=caption, plans=plans, model_ids=model_ids, **fields)

    try:
        obs = backend.reset(task=task, seed=payload.seed, state=state)
        initial_state = backend.get_state()
        scene = backend.scene_description()
        policy, model_ids = build_policy(cfg, payload, backend, store)
        policy.reset(task.to_dict(), instruction, scene)
        # every episode's caption comes from the upsampler imagine-then-act plans with, whatever policy runs it,
        # so the world model trains on the captions it is prompted with (asked before the robot moves: an
        # unreachable upsampler fails the episode, not a finished rollout)
        caption = getattr(policy, "caption", None) or caption_for(cfg, instruction, scene)
        t_reset = time.perf_counter()
        frames.append(obs["rgb"])
        proprio.append(obs["proprio"])
        success, reward, failure = False, 0.0, None
        while len(actions) < max_steps:
            if should_stop():
                raise Cancelled()
            if hasattr(policy, "set_reference"):  # plan from where the filter checks from (stale after a hold)
                policy.set_reference(backend.command_reference())
                # and from the frame that reference was read with (NEO: after a hold, the held robot's, not the
                # last chunk's final frame); the recorded frames stay the steps' own
                obs = backend.latest_observation() or obs
            raw = policy.act(obs)
            info = getattr(raw, "info", None) or {}
            if "candidates" in info:
                plans.append({"t": len(actions), "candidates": info["candidates"], "videos": info.get("videos"),
                              **({"goal_phase": info["goal_phase"]} if "goal_phase" in info else {})})
            out = _chunk_of(raw)
            if out.hold or out.actions.shape[0] == 0:
                failure = out.failure_reason or "policy held still"
                break
            chunk = out.actions[: max_steps - len(actions)]  # (h, 16)
            try:
                res = backend.step(chunk)
            except SafetyViolation as exc:  # refused before it reached the robot: a failed episode
                failure = f"safety filter: {exc}"
                break
            for o in res.observations:
                frames.append(o["rgb"])
                proprio.append(o["proprio"])
            actions.extend(chunk[: len(res.observations)])
            reward += float(res.info.get("reward", 0.0))
            success = bool(res.success)
            if res.observations:
                for o in res.observations[:-1] if hasattr(policy, "observe") else ():
                    policy.observe(o)  # context for the next plan (imagine-then-act's last frames)
                obs = res.observations[-1]
            if res.done or success or not res.observations:
                break
        logs = policy.logs() if hasattr(policy, "logs") else {}
    except Cancelled:
        raise
    except Exception as exc:
        drop_backend(payload.backend)  # the next task gets a clean one
        if not frames:  # nothing ran: nothing to keep
            raise
        raise EpisodeAborted(outcome(success=False, reward=0.0, failure_reason=f"aborted: {type(exc).__name__}: {exc}"),
                             exc) from exc
    t_end = time.perf_counter()
    return outcome(success=success, reward=reward, failure_reason=failure, logs=logs,
                   timings={"reset_s": t_reset - t0, "rollout_s": t_end - t_reset, "total_s": t_end - t0})
