"""Ledger helpers the store does not have yet: a batch insert of runs and a batch read of states.

`db.store.ExperienceStore` has the per-run ledger methods (create, mark running, heartbeat, finish,
stale, requeue, dead, cancel); enqueueing thousands of runs and waiting on them needs one
transaction per batch instead of one per run. These use the store's models and session directly.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select


def create_runs(
    store: Any, name: str, keys: Sequence[str], payloads: Sequence[dict[str, Any]], *, queue: str,
    priority: int, max_attempts: int, deadline: datetime | None,
) -> list[Any]:
    """Insert one queued run per (key, payload) in one transaction; returns `TaskRunRow`s.

    Keys already used return their existing run (the call is idempotent like `create_task_run`)."""
    from db.models import TaskRun
    from db.records import TaskRunRow, from_orm

    with store._tx("creating task runs") as s:
        existing = {r.idempotency_key: r for r in s.scalars(select(TaskRun).where(TaskRun.idempotency_key.in_(keys)))}
        runs = []
        for key, payload in zip(keys, payloads):
            run = existing.get(key)
            if run is None:
                run = TaskRun(name=name, idempotency_key=key, payload=payload, queue=queue, priority=priority,
                              max_attempts=max_attempts, deadline=deadline, state="queued", attempts=0)
                s.add(run)
            runs.append(run)
        s.flush()
        return [from_orm(TaskRunRow, r) for r in runs]


def states(store: Any, run_ids: Sequence[int]) -> dict[int, str]:
    """`{run_id: state}` for the ids that exist, in one query."""
    from db.models import TaskRun

    out: dict[int, str] = {}
    ids = list(run_ids)
    with store._tx("reading task run states") as s:
        for i in range(0, len(ids), 500):
            for rid, state in s.execute(select(TaskRun.id, TaskRun.state).where(TaskRun.id.in_(ids[i:i + 500]))):
                out[rid] = state
    return out


def rows(store: Any, run_ids: Sequence[int]) -> dict[int, Any]:
    """`{run_id: TaskRunRow}` for the ids that exist, in one transaction (what `wait` returns)."""
    from db.models import TaskRun
    from db.records import TaskRunRow, from_orm

    out: dict[int, Any] = {}
    ids = list(run_ids)
    with store._tx("reading task runs") as s:
        for i in range(0, len(ids), 500):
            for run in s.scalars(select(TaskRun).where(TaskRun.id.in_(ids[i:i + 500]))):
                out[run.id] = from_orm(TaskRunRow, run)
    return out


# -- the worker's hot path: one Core statement per step (the ORM round trips cost ~10 ms each on SQLite)


def read_run(store: Any, run_id: int) -> dict[str, Any] | None:
    """name, state, payload, deadline, attempts, task_spec_id of one run (None if unknown)."""
    from db.models import TaskRun

    cols = (TaskRun.name, TaskRun.state, TaskRun.payload, TaskRun.deadline, TaskRun.attempts, TaskRun.task_spec_id)
    with store.engine.begin() as conn:
        row = conn.execute(select(*cols).where(TaskRun.id == run_id)).first()
    return None if row is None else dict(row._mapping)


def claim(store: Any, run_id: int, worker: str, celery_task_id: str | None) -> bool:
    """`mark_running` in one statement: queued -> running (attempts + 1); False if not queued."""
    from sqlalchemy import update

    from db.models import TaskRun, utcnow

    now = utcnow()
    with store.engine.begin() as conn:
        res = conn.execute(update(TaskRun).where(TaskRun.id == run_id, TaskRun.state == "queued").values(
            state="running", attempts=TaskRun.attempts + 1, worker=worker, celery_task_id=celery_task_id,
            started_at=now, heartbeat_at=now, error=None, updated_at=now))
    return res.rowcount == 1


def finish(store: Any, run_id: int, state: str, *, error: str | None = None,
           result: dict[str, Any] | None = None) -> bool:
    """`finish` in one statement: running -> state; False if the run was not running any more."""
    from sqlalchemy import update

    from db.models import TERMINAL_STATES, TaskRun, utcnow

    assert state in TERMINAL_STATES, state
    now = utcnow()
    with store.engine.begin() as conn:
        res = conn.execute(update(TaskRun).where(TaskRun.id == run_id, TaskRun.state == "running").values(
            state=state, error=error, result=result, finished_at=now, updated_at=now))
    return res.rowcount == 1
