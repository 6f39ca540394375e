"""The fleet scheduler's API: validate a `TaskSpec`, write the ledger, send the task; status, cancel, wait.

    sched = Scheduler(cfg)
    run_ids = sched.enqueue(TaskSpec(family="pick", policy="scripted_expert", attempts=4))
    rows = sched.wait(run_ids, timeout=300)

Everything a spec names (backend, policy, model, task) is checked before the first write, so a bad
spec enqueues nothing. The ledger row is written before the message is sent: a worker never sees a
run the ledger does not know. `Dispatcher` is the small interface the flywheel loop talks to; the
Celery implementation sends through the broker, the in-process one runs each task inline (unit tests).
"""
from __future__ import annotations

import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from workers import ledger
from workers.errors import WorkerError
from workers.spec import (
    DATA_SOURCES,
    LOCAL_POLICIES,
    MODEL_POLICIES,
    TASK_NAMES,
    EpisodePayload,
    HookPayload,
    NoopPayload,
    TaskSpec,
)

log = logging.getLogger("workers.client")
TERMINAL = ("succeeded", "failed", "dead", "cancelled")
MAX_RANDOM_SEED = 2**31 - 1


def known_policies() -> list[str]:
    """Policy names a spec may use: the registry of `policies` plus the model-free adapters."""
    names = set(LOCAL_POLICIES)
    try:
        from policies.base import policy_names

        names.update(policy_names())
    except ImportError:
        pass
    return sorted(names)


def resolve_task(spec: TaskSpec, seed: int) -> dict[str, Any]:
    """The TaskInstance dict one attempt of `spec` runs (resolved at enqueue, so it is reproducible)."""
    from envs import tasks as env_tasks

    if spec.task is not None:
        try:
            return env_tasks.TaskInstance.from_dict(spec.task).to_dict()
        except Exception as exc:  # noqa: BLE001 - whatever the dict was, say so
            raise WorkerError(f"invalid task spec: task: {exc}") from None
    if spec.split is not None:
        from envs.splits import load_split

        items = load_split(spec.split)
        if spec.split_index >= len(items):
            raise WorkerError(f"invalid task spec: split_index {spec.split_index} >= {len(items)} items in {spec.split}")
        return items[spec.split_index].task().to_dict()
    if spec.family is not None or spec.instruction is None:
        return env_tasks.sample_task(spec.family, seed).to_dict()
    # an instruction alone: the first training-mix task with that instruction
    want = spec.instruction.strip().lower()
    for k in range(2000):
        task = env_tasks.sample_task(None, seed + k)
        if task.instruction.strip().lower() == want:
            return task.to_dict()
    raise WorkerError(
        f"invalid task spec: instruction {spec.instruction!r} matches no task; give family or split (and seed)"
    )


class Scheduler:
    """Enqueue task specs, read their state, cancel and wait, against the ledger and the broker.

    `cfg` is the composed config (DictConfig) or a `flywheel.config.Config`. `inline=True` runs each
    task in this process instead of sending it (the in-process dispatcher; no broker needed)."""

    def __init__(self, cfg: Any, *, store: Any = None, inline: bool = False) -> None:
        from db.store import ExperienceStore
        from workers.runtime import as_config

        self.cfg = as_config(cfg)
        self.store = store or ExperienceStore.from_config(self.cfg.db, self.cfg.data_path, create=True)
        self.inline = inline
        self._app = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from workers.app import create_app
            from workers.broker import ensure_embedded_broker

            ensure_embedded_broker(self.cfg.broker, self.cfg.data_path)
            self._app = create_app(self.cfg)
        return self._app

    # -- validation --------------------------------------------------------------------------------
    def _resolve_models(self, spec: TaskSpec, policy: str | None = None) -> dict[str, int] | None:
        """Pin every model the run uses to a version number: `model` (one kind), `models` (per kind), and
        the champion of each kind a model policy needs that the spec left open."""
        refs: dict[str, int | str] = {}
        if spec.model is not None:
            refs[spec.model.kind] = spec.model.alias if spec.model.alias is not None else spec.model.version
        refs.update(spec.models or {})
        for kind in MODEL_POLICIES.get(policy or "", ()):
            refs.setdefault(kind, "champion")
        if not refs:
            return None
        from db.errors import StoreError

        out = {}
        for kind, ref in refs.items():
            if isinstance(ref, str) and not ref.isdigit():
                row = self.store.get_alias(kind, ref)
                if row is None:
                    raise WorkerError(f"invalid task spec: model: no {kind} has the alias {ref!r}")
                out[kind] = row.version
                continue
            try:
                self.store.get_model(kind, int(ref))
            except StoreError:
                raise WorkerError(f"invalid task spec: model: {kind} version {ref} is not registered") from None
            out[kind] = int(ref)
        return out

    def _replay_task(self, episode_id: int) -> dict[str, Any]:
        from db.errors import StoreError

        try:
            ep = self.store.get_episode(episode_id)
        except StoreError:
            raise WorkerError(f"invalid task spec: initial_state_episode: unknown episode id {episode_id}") from None
        if not ep.initial_state_uri or not ep.task:
            raise WorkerError(f"invalid task spec: initial_state_episode: episode {episode_id} has no recorded state")
        return dict(ep.task)

    def payloads(self, spec: TaskSpec | dict) -> tuple[TaskSpec, list[dict[str, Any]]]:
        """Validate `spec` completely and build one JSON payload per attempt (nothing is written)."""
        spec = TaskSpec.parse(spec)
        models = self._resolve_models(spec, spec.policy or self.cfg.policy.name if spec.kind == "episode" else None)
        if spec.kind == "noop":
            return spec, [NoopPayload(tags=spec.tags).model_dump()] * spec.attempts
        if spec.kind != "episode":
            return spec, [HookPayload(model=models, params=spec.params, tags=spec.tags).model_dump()] * spec.attempts
        policy = spec.policy or self.cfg.policy.name
        if policy not in known_policies():
            raise WorkerError(f"invalid task spec: policy: unknown policy {policy!r}; known: {', '.join(known_policies())}")
        replay = self._replay_task(spec.initial_state_episode) if spec.initial_state_episode else None
        base = spec.seed if spec.seed is not None else uuid.uuid4().int % (MAX_RANDOM_SEED - 10_000)
        out = []
        for i in range(spec.attempts):
            seed = base + i
            task = replay if replay is not None else resolve_task(spec, seed)
            out.append(EpisodePayload(
                task=task, family=task.get("family"), split=spec.split, split_index=spec.split_index, seed=seed,
                instruction=spec.instruction, backend=spec.backend, policy=policy, model=models,
                max_steps=spec.max_steps, initial_state_episode=spec.initial_state_episode,
                source=DATA_SOURCES.get(policy, "rollout"), tags=spec.tags,
            ).model_dump())
        return spec, out

    # -- enqueue -----------------------------------------------------------------------------------
    def enqueue(self, spec: TaskSpec | dict, *, key: str | None = None) -> list[int]:
        """Validate, write one ledger row per attempt, then send; returns the run ids.

        `key` makes the call idempotent: the same key returns the same runs; a run still queued and never
        claimed is sent again, which is harmless (one worker claims it, other deliveries are skipped)."""
        return self.enqueue_many([spec], key=key)[0]

    ENQUEUE_BATCH = 32  # ledger rows written per transaction before their messages go out

    def enqueue_many(self, specs: Sequence[TaskSpec | dict], *, key: str | None = None,
                     retry_failed: bool = False) -> list[list[int]]:
        """`enqueue` for a batch: every spec is validated before the first ledger write. With `retry_failed`, a
        run of the same key that failed, died or was cancelled (in an earlier invocation) runs again."""
        from workers.app import queue_for

        planned = [self.payloads(spec) for spec in specs]
        key = key or uuid.uuid4().hex
        ids: list[list[int]] = []
        for j, (spec, payloads) in enumerate(planned):
            name = TASK_NAMES[spec.kind]
            queue = queue_for(self.cfg, name, spec.backend)
            keys = [f"{key}:{j}:{i}" for i in range(len(payloads))]
            ids.append([])
            # ledger rows first, then their messages, a batch at a time: workers start on the first
            # batch while the next is written
            for lo in range(0, len(payloads), self.ENQUEUE_BATCH):
                hi = lo + self.ENQUEUE_BATCH
                rows = ledger.create_runs(
                    self.store, name, keys[lo:hi], payloads[lo:hi], queue=queue, priority=spec.priority,
                    max_attempts=self.cfg.broker.max_retries + 1, deadline=spec.deadline, retry_failed=retry_failed,
                )
                for k, row in enumerate(rows):
                    if row.state != "queued" or row.attempts != 0:
                        continue
                    try:
                        self.send(row)
                    except WorkerError as exc:  # this run is dead; the rest of its batch would be orphans
                        for rest in rows[k + 1:]:
                            if rest.state == "queued" and rest.attempts == 0:
                                self.store.mark_dead(rest.id, "not sent: an earlier send of the batch failed")
                        sent = [i for group in ids for i in group] + [r.id for r in rows[:k]]
                        raise WorkerError(f"{exc} (enqueue key {key!r}; runs already sent: {sent[:50]})") from None
                ids[-1] += [row.id for row in rows]
        return ids

    def send(self, row: Any) -> None:
        """Send the message for a queued ledger row (enqueue, and the sweeper's requeue)."""
        kwargs = {"run_id": row.id, "attempt": row.attempts + 1, "payload": row.payload}
        if self.inline:
            from workers.tasks import TASKS_BY_NAME, execute

            stub = SimpleNamespace(app=SimpleNamespace(flywheel_config=self.cfg), request=SimpleNamespace(id=None))
            execute(stub, row.name, (), kwargs, *TASKS_BY_NAME[row.name])
            return
        try:
            self.app.send_task(row.name, kwargs=kwargs, queue=row.queue, priority=self._priority(row.priority),
                               retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2})
        except Exception as exc:  # noqa: BLE001 - kombu raises many types for an unreachable broker
            self.store.mark_dead(row.id, f"could not send to the broker: {exc}")
            raise WorkerError(f"could not send run {row.id} to the broker: {exc}") from None

    def _priority(self, p: int) -> int:
        url = self.cfg.broker.url or ""
        return 9 - p if url.startswith(("redis://", "rediss://")) else p  # Redis: 0 is served first

    # -- status, cancel, wait ------------------------------------------------------------------------
    def status(self, run_id: int) -> Any:
        """The ledger row of a run (`db.records.TaskRunRow`): state, attempts, worker, error, result."""
        from db.errors import StoreError

        try:
            return self.store.get_task_run(int(run_id))
        except StoreError as exc:
            raise WorkerError(str(exc)) from None

    def cancel(self, run_id: int, reason: str = "cancelled by user") -> bool:
        """Cancel a queued or running run (a running one stops at its next heartbeat); False if it had
        already finished."""
        self.status(run_id)  # unknown id -> WorkerError
        return self.store.cancel(int(run_id), reason) is not None

    def wait(self, run_ids: Sequence[int], timeout: float | None = None, poll_s: float = 0.2) -> list[Any]:
        """Block until every run is terminal; returns their rows. WorkerError on timeout, naming the rest."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(dict.fromkeys(int(r) for r in run_ids))
        while True:
            current = ledger.states(self.store, pending)
            missing = [r for r in pending if r not in current]
            if missing:
                raise WorkerError(f"unknown task run ids {missing[:20]}")
            pending = [r for r in pending if current[r] not in TERMINAL]
            if not pending:
                rows = ledger.rows(self.store, list(dict.fromkeys(int(r) for r in run_ids)))  # one query
                return [rows[int(r)] for r in run_ids]
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(f"timed out after {timeout}s waiting for runs {pending[:20]}")
            time.sleep(poll_s)

    def close(self) -> None:
        self.store.close()


class Dispatcher(ABC):
    """What the flywheel loop needs from the execution layer: dispatch a batch of specs, then wait."""

    @abstractmethod
    def dispatch(self, specs: Sequence[TaskSpec | dict]) -> list[int]:
        """Enqueue every spec (all validated first: one bad spec enqueues nothing); returns run ids."""

    @abstractmethod
    def wait(self, run_ids: Sequence[int], timeout: float | None = None) -> list[Any]:
        """Block until the runs are terminal; returns their ledger rows."""

    @abstractmethod
    def cancel(self, run_id: int) -> bool:
        """Cancel one run."""


class CeleryDispatcher(Dispatcher):
    """Dispatch through the broker to real worker processes (start them with `WorkerPool`)."""

    inline = False

    def __init__(self, cfg: Any, store: Any = None) -> None:
        self.scheduler = Scheduler(cfg, store=store, inline=self.inline)

    def dispatch(self, specs: Sequence[TaskSpec | dict]) -> list[int]:
        return [rid for group in self.scheduler.enqueue_many(specs) for rid in group]

    def wait(self, run_ids: Sequence[int], timeout: float | None = None) -> list[Any]:
        return self.scheduler.wait(run_ids, timeout)

    def cancel(self, run_id: int) -> bool:
        return self.scheduler.cancel(run_id)


class InProcessDispatcher(CeleryDispatcher):
    """Same ledger protocol, no broker: each task runs inline when dispatched (unit tests)."""

    inline = True
