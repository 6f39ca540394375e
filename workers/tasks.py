"""The task bodies. Names are public (docs/tasks_contract.md); messages are JSON keyword arguments
`{run_id, attempt, payload}` and every body follows the same ledger protocol:

1. validate the message (refused messages go to the rejects log, the ledger is not touched);
2. re-read the run from the store, check the message matches it, claim it (`mark_running`; a run
   that is not queued any more -- finished, cancelled, or claimed by another worker -- is skipped);
3. heartbeat from a thread while the body runs; a failed heartbeat (cancelled, or requeued by the
   sweeper) asks the body to stop;
4. write the result (episodes idempotently by run id) and finish the ledger row.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Self

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from workers import ledger
from workers.errors import WorkerError
from workers.rejects import record_reject
from workers.spec import DATA_SOURCES, parse_message

log = logging.getLogger("workers.tasks")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Beats the ledger every `interval` seconds from a thread; `stopped()` turns true when the run is
    no longer ours (cancelled, or requeued by the sweeper)."""

    def __init__(self, store: Any, run_id: int, worker: str, interval: float) -> None:
        self.store, self.run_id, self.worker, self.interval = store, run_id, worker, interval
        self._lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                if not self.store.heartbeat(self.run_id, self.worker):
                    self._lost.set()
                    return
            except Exception:
                log.exception("heartbeat of run %s failed", self.run_id)

    def stopped(self) -> bool:
        return self._lost.is_set()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)


Body = Callable[[Any, Any, Any, Any, Callable[[], bool]], dict]


def execute(task: Any, name: str, args: tuple, kwargs: dict, body: Body, heartbeat: bool = True) -> dict:
    """The ledger protocol around `body(cfg, store, run, payload, should_stop) -> result dict`."""
    from workers.episode import Cancelled
    from workers.runtime import open_store

    cfg = task.app.flywheel_config
    try:
        msg, payload = parse_message(name, args, kwargs, cfg.broker.max_payload_bytes)
    except WorkerError as exc:
        record_reject(cfg.data_path, str(exc), task=name, celery_id=task.request.id)
        return {"rejected": str(exc)}
    store = open_store(cfg)
    worker = worker_name()
    now = datetime.now(UTC)

    sent = json.dumps(msg.payload, sort_keys=True)

    def matches(row: dict[str, Any]) -> bool:  # the message is the one the ledger holds for this run
        return row["name"] == name and json.dumps(row["payload"], sort_keys=True) == sent

    def expired(row: dict[str, Any]) -> bool:
        return row["state"] == "queued" and row["deadline"] is not None and row["deadline"] < now

    def claimable(row: dict[str, Any]) -> bool:
        return matches(row) and not expired(row)

    run, won = ledger.read_and_claim(store, msg.run_id, worker, task.request.id, claimable)
    if run is None:
        reason = f"unknown task run id {msg.run_id}"
        record_reject(cfg.data_path, reason, task=name, run_id=msg.run_id)
        return {"rejected": reason}
    if not won and not matches(run):  # a claimed run matched already (claimable checked it)
        reason = f"message does not match ledger run {msg.run_id} ({run['name']})"
        record_reject(cfg.data_path, reason, task=name, run_id=msg.run_id)
        return {"rejected": reason}
    if not won and expired(run):
        store.mark_dead(msg.run_id, f"deadline {run['deadline'].isoformat()} passed before a worker took it")
        return {"skipped": "deadline"}
    if not won:
        log.info("run %s is %s, not queued: skipping this delivery", msg.run_id, run["state"])
        return {"skipped": run["state"]}
    claimed = SimpleNamespace(id=msg.run_id, attempts=run["attempts"] + 1, task_spec_id=run["task_spec_id"])
    try:
        if heartbeat:
            with Heartbeat(store, claimed.id, worker, cfg.broker.heartbeat_s) as hb:
                result = body(cfg, store, claimed, payload, hb.stopped)
        else:
            result = body(cfg, store, claimed, payload, lambda: False)
    except Cancelled:
        log.info("run %s stopped: cancelled or taken over", claimed.id)
        return {"stopped": True}
    except Exception as exc:  # (an aborted episode carries its cause, and what ran in `run_result`)
        if isinstance(getattr(exc, "cause", exc), SoftTimeLimitExceeded):
            ledger.finish(store, claimed.id, "failed", error=f"time limit of {cfg.broker.soft_time_limit_s}s exceeded",
                          result=getattr(exc, "run_result", None))
            return {"failed": "time limit"}
        log.exception("run %s failed", claimed.id)
        error = getattr(exc, "run_error", None) or f"{type(exc).__name__}: {exc}"
        ledger.finish(store, claimed.id, "failed", error=error[:4000], result=getattr(exc, "run_result", None))
        return {"failed": str(exc)}
    ledger.finish(store, claimed.id, "succeeded", result=result)
    return result


# ------------------------------------------------------------------ bodies


def _episode_body(cfg: Any, store: Any, run: Any, payload: Any, should_stop: Callable[[], bool]) -> dict:
    from db.records import CandidateRecord, EpisodeRecord
    from workers.episode import EpisodeAborted, run_episode

    state = store.load_initial_state(payload.initial_state_episode) if payload.initial_state_episode else None
    try:
        out = run_episode(cfg, payload, should_stop, store=store, state=state)
    except EpisodeAborted as aborted:
        aborted.run_result = {"partial": _keep_partial(store, aborted.outcome)}
        raise
    if should_stop():  # cancelled between the last step and now: write nothing
        from workers.episode import Cancelled

        raise Cancelled()
    source = DATA_SOURCES.get(payload.policy, payload.source)
    candidates = []
    for step, (plan, (uri, sha)) in enumerate(zip(out.plans, _put_videos(store, out.plans), strict=True)):
        candidates += [CandidateRecord(plan_step=step, index=int(c["index"]), scores=dict(c["scores"]),
                                       chosen=bool(c["chosen"]), rejected_reason=c.get("rejected_reason"),
                                       artifact_uri=uri, artifact_sha256=sha) for c in plan["candidates"]]
    record = EpisodeRecord(
        source=source, task_family=out.task["family"], instruction=out.instruction, policy=payload.policy,
        success=out.success, length=out.length, backend=payload.backend, reward=out.reward,
        seed=payload.seed, split=out.task.get("split"), caption=out.caption, task=out.task,
        task_run_id=run.id, task_spec_id=run.task_spec_id,
        world_model_version_id=out.model_ids.get("world_model"), idm_version_id=out.model_ids.get("idm"),
        timings=out.timings,
        meta={"failure_reason": out.failure_reason, "tags": list(payload.tags), "attempt": run.attempts,
              "models": dict(payload.model or {}), "policy_logs": out.logs,
              "replayed_from_episode": payload.initial_state_episode,
              "plan_steps": [{"t": p["t"], **({"goal_phase": p["goal_phase"]} if "goal_phase" in p else {})}
                             for p in out.plans]},
    )
    arrays = {"frames": out.frames, "proprio": out.proprio, "actions": out.actions}
    episode_id = store.record_episode(record, arrays, initial_state=out.initial_state, candidates=candidates)
    return {"episode_id": episode_id, "success": out.success, "length": out.length, "reward": out.reward}


def _put_videos(store: Any, plans: list[dict]) -> list[tuple[str | None, str | None]]:
    """(uri, sha256) in the artifact store of each planning step's imagined videos, (N, T, H, W, 3) uint8: what
    the robot imagined at that step; (None, None) for a step without."""
    return [store.artifacts.put_arrays({"videos": p["videos"]}) if p.get("videos") is not None else (None, None)
            for p in plans]


def _keep_partial(store: Any, out: Any) -> dict | None:
    """An aborted attempt, kept for inspection but not as an episode (nothing trains on it or counts it in a
    success rate: it says nothing about the policy): its arrays and each planning step's candidates and videos
    in the artifact store, and where they are, for the failed run's `result`. None if they cannot be written
    (the run's error then says why it failed, as before)."""
    try:
        uri, sha = store.artifacts.put_arrays({"frames": out.frames, "proprio": out.proprio, "actions": out.actions})
        plans = [{"t": plan["t"], "candidates": plan["candidates"], "videos_uri": v_uri, "videos_sha256": v_sha}
                 for plan, (v_uri, v_sha) in zip(out.plans, _put_videos(store, out.plans), strict=True)]
    except Exception:  # keeping the evidence must not hide the failure itself
        log.exception("could not keep the aborted attempt's arrays")
        return None
    return {"arrays_uri": uri, "arrays_sha256": sha, "length": out.length, "failure_reason": out.failure_reason,
            "caption": out.caption, "models": dict(out.model_ids), "plans": plans}


def _hook_body(hook: str) -> Body:
    def body(cfg: Any, store: Any, run: Any, payload: Any, should_stop: Callable[[], bool]) -> dict:
        try:
            module = importlib.import_module("flywheel.hooks")
            fn = getattr(module, hook)
        except (ImportError, AttributeError) as exc:
            raise WorkerError(f"hook flywheel.hooks.{hook} is not available: {exc}") from None
        from workers.runtime import full_config

        result = fn(full_config(cfg), store, payload.model_dump(), run_id=run.id, should_stop=should_stop)
        return dict(result or {})

    return body


def _noop_body(cfg: Any, store: Any, run: Any, payload: Any, should_stop: Callable[[], bool]) -> dict:
    return {}


# ------------------------------------------------------------------ the registered tasks


@shared_task(bind=True, name="flywheel.run_episode")
def run_episode_task(self: Any, *args: Any, **kwargs: Any) -> dict:
    """Run one episode with a policy on a backend and record it (see workers/episode.py)."""
    return execute(self, "flywheel.run_episode", args, kwargs, _episode_body)


@shared_task(bind=True, name="flywheel.retrain")
def retrain_task(self: Any, *args: Any, **kwargs: Any) -> dict:
    """Retrain models from the store: calls `flywheel.hooks.retrain`."""
    return execute(self, "flywheel.retrain", args, kwargs, _hook_body("retrain"))


@shared_task(bind=True, name="flywheel.evaluate")
def evaluate_task(self: Any, *args: Any, **kwargs: Any) -> dict:
    """Evaluate a model version: calls `flywheel.hooks.evaluate`."""
    return execute(self, "flywheel.evaluate", args, kwargs, _hook_body("evaluate"))


@shared_task(bind=True, name="flywheel.promote")
def promote_task(self: Any, *args: Any, **kwargs: Any) -> dict:
    """Promote a challenger if it beats the champion: calls `flywheel.hooks.promote`."""
    return execute(self, "flywheel.promote", args, kwargs, _hook_body("promote"))


@shared_task(bind=True, name="flywheel.noop")
def noop_task(self: Any, *args: Any, **kwargs: Any) -> dict:
    """Do nothing through the full ledger protocol (dispatch benchmarks, liveness checks)."""
    return execute(self, "flywheel.noop", args, kwargs, _noop_body, heartbeat=False)


@shared_task(name="flywheel.ping", ignore_result=False)
def ping_task() -> str:
    """A plain Celery task outside the ledger: liveness checks, and the dispatch benchmark's baseline."""
    return "pong"


@shared_task(bind=True, name="flywheel.tick")
def tick_task(self: Any) -> dict:
    """Celery beat's periodic check for long-running deployments (outside the ledger, like ping): when
    K new rollouts arrived since the newest world model's data snapshot, enqueue a retrain of both
    models from the champions through the scheduler (ledger first; idempotent by phase)."""
    from flywheel.hooks import retrain_due
    from workers.client import Scheduler
    from workers.runtime import full_config, open_store

    cfg = full_config(self.app.flywheel_config)
    store = open_store(cfg)
    phase = retrain_due(cfg, store)
    if phase is None:
        return {"enqueued": False}
    run_ids = Scheduler(cfg, store=store).enqueue(
        {"kind": "retrain", "params": {"kind": "both", "phase": phase, "parent": "champion"}}, key=f"tick:{phase}")
    return {"enqueued": True, "phase": phase, "run_ids": run_ids}


# name -> (body, heartbeat) for the in-process dispatcher (workers.client, inline=True)
TASKS_BY_NAME: dict[str, tuple[Body, bool]] = {
    "flywheel.run_episode": (_episode_body, True),
    "flywheel.retrain": (_hook_body("retrain"), True),
    "flywheel.evaluate": (_hook_body("evaluate"), True),
    "flywheel.promote": (_hook_body("promote"), True),
    "flywheel.noop": (_noop_body, False),
}
