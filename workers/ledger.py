"""Ledger helpers the store does not have yet: a batch insert of runs and a batch read of states.

`db.store.ExperienceStore` has the per-run ledger methods (create, mark running, heartbeat, finish,
stale, requeue, dead, cancel); enqueueing thousands of runs and waiting on them needs one
transaction per batch instead of one per run. These use the store's models and session directly.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select


def create_runs(
    store: Any, name: str, keys: Sequence[str], payloads: Sequence[dict[str, Any]], *, queue: str,
    priority: int, max_attempts: int, deadline: datetime | None, retry_failed: bool = False,
) -> list[Any]:
    """Insert one queued run per (key, payload) in one transaction; returns `TaskRunRow`s.

    Keys already used return their existing run (the call is idempotent like `create_task_run`). With
    `retry_failed`, an existing run that failed, died or was cancelled is queued again with all its attempts."""
    from db.models import TaskRun, utcnow
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
            elif retry_failed and run.state in ("failed", "dead", "cancelled"):
                # what its aborted attempts left stays pointed at (the next finish carries it on)
                run.result = with_earlier_partials(run.result, None)
                run.state, run.attempts, run.worker, run.error = "queued", 0, None, None
                run.finished_at, run.updated_at = None, utcnow()
            runs.append(run)
        s.flush()
        return [from_orm(TaskRunRow, r) for r in runs]


def with_earlier_partials(previous: dict[str, Any] | None, result: dict[str, Any] | None) -> dict[str, Any] | None:
    """`result` plus, under `earlier_partials`, the partial attempts `previous` (the run's result until now) pointed
    at: its own `partial` (an aborted attempt's arrays, kept by the episode task) and the ones it carried. A run
    retried after an aborted attempt keeps the way to that attempt's evidence, whatever the next attempt writes."""
    prev = previous if isinstance(previous, dict) else {}
    earlier = [p for p in [*(prev.get("earlier_partials") or []), prev.get("partial")] if p]
    if not earlier:
        return result
    return {**(result or {}), "earlier_partials": earlier}


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
    """`{run_id: TaskRunRow}` for the ids that exist, in one Core query (what `wait` returns)."""
    from db.models import TaskRun
    from db.records import TaskRunRow

    t = TaskRun.__table__
    fields = [f.name for f in dataclasses.fields(TaskRunRow)]
    out: dict[int, Any] = {}
    ids = list(run_ids)
    with store.engine.connect() as conn:
        for i in range(0, len(ids), 500):
            for r in conn.execute(select(*(t.c[f] for f in fields)).where(t.c.id.in_(ids[i:i + 500]))):
                out[r.id] = TaskRunRow(**r._mapping)
    return out


# -- the worker's hot path: one prebuilt Core statement per step, on the table (not the ORM entity).
# Building a statement per call (coercions, ORM bulk-update bookkeeping) cost ~5x the SQLite work itself;
# these are built once per process and executed with bound parameters.

_STATEMENTS: dict[str, Any] = {}


def _statements() -> dict[str, Any]:
    if not _STATEMENTS:
        from sqlalchemy import bindparam, update

        from db.models import TaskRun

        t = TaskRun.__table__
        c = t.c
        _STATEMENTS["read"] = select(c.name, c.state, c.payload, c.deadline, c.attempts, c.task_spec_id).where(
            c.id == bindparam("rid"))
        _STATEMENTS["claim"] = update(t).where(c.id == bindparam("rid"), c.state == "queued").values(
            state="running", attempts=c.attempts + 1, worker=bindparam("w"), celery_task_id=bindparam("cid"),
            started_at=bindparam("now"), heartbeat_at=bindparam("now"), error=None, updated_at=bindparam("now"))
        _STATEMENTS["result"] = select(c.result).where(c.id == bindparam("rid"))
        _STATEMENTS["finish"] = update(t).where(c.id == bindparam("rid"), c.state == "running").values(
            state=bindparam("st"), error=bindparam("err"), result=bindparam("res"), finished_at=bindparam("now"),
            updated_at=bindparam("now"))
    return _STATEMENTS


def read_and_claim(
    store: Any, run_id: int, worker: str, celery_task_id: str | None, accept: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any] | None, bool]:
    """Read a run (name, state, payload, deadline, attempts, task_spec_id), then claim it if `accept(row)`
    (queued -> running, attempts + 1), on one connection: (row or None, claimed).

    The read runs outside a write transaction (pysqlite and PostgreSQL's read committed both start
    the write at the UPDATE), and the UPDATE re-checks `state == 'queued'`, so a run claimed by
    another worker in between is not claimed twice."""
    from db.models import utcnow

    st = _statements()
    with store.engine.begin() as conn:
        found = conn.execute(st["read"], {"rid": run_id}).first()
        if found is None:
            return None, False
        row = dict(found._mapping)
        if not accept(row):
            return row, False
        res = conn.execute(st["claim"], {"rid": run_id, "w": worker, "cid": celery_task_id, "now": utcnow()})
    return row, res.rowcount == 1


def finish(store: Any, run_id: int, state: str, *, error: str | None = None,
           result: dict[str, Any] | None = None) -> bool:
    """`finish` in one statement: running -> state; False if the run was not running any more."""
    from db.models import TERMINAL_STATES, utcnow

    assert state in TERMINAL_STATES, state
    with store.engine.begin() as conn:
        previous = conn.execute(_statements()["result"], {"rid": run_id}).scalar()
        res = conn.execute(_statements()["finish"], {"rid": run_id, "st": state, "err": error,
                                                     "res": with_earlier_partials(previous, result), "now": utcnow()})
    return res.rowcount == 1
