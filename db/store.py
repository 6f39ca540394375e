"""The experience store: episodes and their arrays, the task ledger, the model registry, evaluations.

    store = ExperienceStore.from_config(cfg.db, cfg.data_path, create=True)
    ep_id = store.record_episode(EpisodeRecord(...), {"frames": frames, "actions": actions})
    arrays = store.load_arrays(ep_id)                      # sha256-verified

Every method is one transaction. Arrays are written to the artifact store first, then the row, so a
failed write leaves at most an unreferenced content-addressed file (which no query sees), never an
orphan row. `record_episode` is idempotent by `task_run_id`. Opening a store whose schema is not at
the head revision raises SchemaError (run `flywheel db upgrade`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import queries
from db.artifacts import ArtifactStore
from db.engine import make_engine, make_session_factory, safe_url
from db.errors import ArtifactError, SchemaError, StoreError
from db.models import (
    MODEL_KINDS,
    TERMINAL_STATES,
    Alias,
    AliasHistory,
    Candidate,
    Episode,
    EpisodeRollup,
    Evaluation,
    ModelVersion,
    TaskRun,
    TaskSpec,
    TrainingRun,
    utcnow,
)
from db.records import (
    AliasChange,
    CandidateRecord,
    EpisodeRecord,
    EpisodeRow,
    ModelVersionRow,
    SuccessRate,
    TaskRunRow,
    TrainingRunRow,
    from_orm,
)
from db.schema import check_schema, current_revision, is_empty, upgrade

_EPISODE_COLUMNS = [f.name for f in fields(EpisodeRecord)]
_ROLLUP_KEY = ("day", "task_family", "world_model_version_id", "idm_version_id", "backend", "policy", "source")
SQLITE_FILE = "store.sqlite"
ARTIFACT_DIR = "artifacts"


class ExperienceStore:
    """SQL rows (SQLite or PostgreSQL) plus a content-addressed artifact store for the arrays."""

    def __init__(self, engine: Engine, artifacts: ArtifactStore):
        self.engine = engine
        self.artifacts = artifacts
        self.Session = make_session_factory(engine)

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, artifact_url: str, *, create: bool = False, **engine_kw: Any) -> ExperienceStore:
        """Open the store at `url`; with `create`, a brand-new (empty) database is migrated first.
        A store at any other revision raises SchemaError."""
        engine = make_engine(url, **engine_kw)
        try:
            if create and current_revision(engine) is None and is_empty(engine):
                upgrade(engine)
            check_schema(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot read the schema of {safe_url(url)!r}: {str(exc).splitlines()[0]}") from None
        except StoreError:
            engine.dispose()
            raise
        return cls(engine, ArtifactStore(artifact_url))

    @classmethod
    def from_config(cls, db_cfg: Any, data_dir: str | Path, *, create: bool = False) -> ExperienceStore:
        """Open the store a `DBConfig` names, with the embedded defaults under `data_dir`:
        SQLite `store.sqlite` and the folder `artifacts/`."""
        url, artifact_url = resolve_urls(db_cfg, data_dir)
        data_dir = Path(data_dir)
        if db_cfg.url is None:
            if create:
                data_dir.mkdir(parents=True, exist_ok=True)
            elif not (data_dir / SQLITE_FILE).is_file():
                raise SchemaError(
                    f"no experience store at {data_dir / SQLITE_FILE}; run `flywheel db upgrade` "
                    "(or set data_dir=... to the folder of an existing run)"
                )
        engine_kw = {"echo": db_cfg.echo, "busy_timeout_ms": db_cfg.busy_timeout_ms, "pool_size": db_cfg.pool_size}
        return cls.open(url, artifact_url, create=create, **engine_kw)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, what: str) -> Iterator[Session]:
        """One transaction; database errors become one StoreError line saying what failed."""
        try:
            with self.Session.begin() as session:
                yield session
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            raise StoreError(f"{what} failed: {str(orig).strip().splitlines()[0]}") from None

    # -- episodes ---------------------------------------------------------------------------------
    def record_episode(
        self,
        record: EpisodeRecord,
        arrays: dict[str, np.ndarray] | None = None,
        *,
        initial_state: dict[str, np.ndarray] | None = None,
        candidates: Sequence[CandidateRecord] = (),
    ) -> int:
        """Write the arrays, then the episode row (and its candidates) in one transaction; returns its id.

        Idempotent by `record.task_run_id`: when an episode exists for that run its id is returned
        and nothing is written. `arrays` e.g. frames uint8 (T+1, H, W, 3), proprio (T+1, 32), actions (T, 16).
        """
        record.validate()
        if record.task_run_id is not None and (existing := self._episode_for_run(record.task_run_id)) is not None:
            return existing
        values = _episode_values(record, utcnow())
        if arrays:
            values["artifact_uri"], values["artifact_sha256"] = self.artifacts.put_arrays(arrays)
        if initial_state:
            values["initial_state_uri"], values["initial_state_sha256"] = self.artifacts.put_arrays(initial_state)
        try:
            with self._tx("recording an episode") as s:
                ep_id = s.execute(insert(Episode).returning(Episode.id), values).scalar_one()
                _upsert_rollups(s, [values])
                if candidates:
                    s.execute(insert(Candidate), [_candidate_values(ep_id, c) for c in candidates])
        except StoreError:
            if record.task_run_id is not None and (existing := self._episode_for_run(record.task_run_id)):
                return existing  # a concurrent delivery of the same task won the race
            raise
        return ep_id

    def record_episodes_bulk(self, records: Sequence[EpisodeRecord]) -> int:
        """Insert many metadata-only episodes (arrays already stored, or none) in one transaction.

        The fast path for imports and benchmarks: no idempotency check and no ids returned.
        Returns the number of rows inserted."""
        if not records:
            return 0
        now = utcnow()
        rows = []
        for rec in records:
            rec.validate()
            rows.append(_episode_values(rec, now))
        with self._tx(f"bulk-recording {len(rows)} episodes") as s:
            s.connection().execute(Episode.__table__.insert(), rows)
            _upsert_rollups(s, rows)
        return len(rows)

    def _episode_for_run(self, task_run_id: int) -> int | None:
        with self._tx("looking up an episode") as s:
            return s.scalar(select(Episode.id).where(Episode.task_run_id == task_run_id))

    def get_episode(self, episode_id: int) -> EpisodeRow:
        """The episode with this id (StoreError if there is none)."""
        with self._tx(f"reading episode {episode_id}") as s:
            return queries.get_episode(s, episode_id)

    def episodes(self, **filters: Any) -> list[EpisodeRow]:
        """Episodes matching `queries.list_episodes` filters (task, success, model version, backend, ...)."""
        with self._tx("listing episodes") as s:
            return queries.list_episodes(s, **filters)

    def set_captions(self, captions: dict[int, str]) -> int:
        """Replace these episodes' captions in one transaction: all or none (StoreError naming an unknown id
        or an empty caption). Returns how many changed."""
        for eid, text in captions.items():
            if not isinstance(text, str) or not text.strip():
                raise StoreError(f"episode {eid}: a caption must be non-empty text, got {text!r}")
        changed = 0
        with self._tx("replacing captions") as s:
            for eid, text in captions.items():
                ep = s.get(Episode, int(eid))
                if ep is None:
                    raise StoreError(f"unknown episode id {eid}")
                changed += ep.caption != text
                ep.caption = text
        return changed

    def success_rate(self, **kw: Any) -> list[SuccessRate]:
        """Success rate by task x world-model version x backend (see `queries.success_rate`)."""
        with self._tx("computing success rates") as s:
            return queries.success_rate(s, **kw)

    def counts(self) -> dict[str, int]:
        """Row counts per table, for `flywheel db stats`."""
        with self._tx("counting rows") as s:
            return queries.counts(s)

    def load_arrays(self, episode_id: int) -> dict[str, np.ndarray]:
        """The episode's arrays, sha256-verified; ArtifactError names the episode when they are bad."""
        ep = self.get_episode(episode_id)
        return self._load(episode_id, ep.artifact_uri, ep.artifact_sha256, "arrays")

    def load_initial_state(self, episode_id: int) -> dict[str, np.ndarray]:
        """The saved simulator state the episode started from (for `env.set_state`)."""
        ep = self.get_episode(episode_id)
        return self._load(episode_id, ep.initial_state_uri, ep.initial_state_sha256, "initial state")

    def _load(self, episode_id: int, uri: str | None, sha: str | None, what: str) -> dict[str, np.ndarray]:
        if uri is None or sha is None:
            raise ArtifactError(f"episode {episode_id} has no {what} recorded")
        try:
            return self.artifacts.get_arrays(uri, sha)
        except ArtifactError as exc:
            raise ArtifactError(f"episode {episode_id}: {exc}") from None

    def record_candidates(self, episode_id: int, candidates: Sequence[CandidateRecord]) -> int:
        """Add imagined candidates to an episode; ones already recorded (same step and index) are skipped.
        Returns how many were inserted."""
        with self._tx("recording candidates") as s:
            if s.get(Episode, episode_id) is None:
                raise StoreError(f"unknown episode id {episode_id}")
            seen = set(s.execute(select(Candidate.plan_step, Candidate.index).where(Candidate.episode_id == episode_id)))
            new = [_candidate_values(episode_id, c) for c in candidates if (c.plan_step, c.index) not in seen]
            if new:
                s.execute(insert(Candidate), new)
            return len(new)

    def candidates(self, episode_id: int) -> list[CandidateRecord]:
        """An episode's candidates, by planning step then index."""
        with self._tx("reading candidates") as s:
            rows = s.scalars(
                select(Candidate).where(Candidate.episode_id == episode_id).order_by(Candidate.plan_step, Candidate.index)
            )
            return [from_orm(CandidateRecord, c) for c in rows]

    def add_task_spec(self, task: dict[str, Any]) -> int:
        """Store a task instance (`TaskInstance.to_dict()`); returns its id."""
        with self._tx("recording a task spec") as s:
            spec = TaskSpec(
                family=task["family"], instruction=task.get("instruction", ""), seed=task.get("seed"),
                split=task.get("split"), spec=task,
            )
            s.add(spec)
            s.flush()
            return spec.id

    # -- task ledger ------------------------------------------------------------------------------
    def create_task_run(
        self,
        name: str,
        idempotency_key: str,
        payload: dict[str, Any] | None = None,
        *,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        deadline: datetime | None = None,
        task_spec_id: int | None = None,
    ) -> TaskRunRow:
        """Enqueue a task in the ledger (state queued). Idempotent by `idempotency_key`: the existing run
        is returned when the key was used before."""
        try:
            with self._tx("creating a task run") as s:
                run = TaskRun(
                    name=name, idempotency_key=idempotency_key, payload=payload or {}, queue=queue,
                    priority=priority, max_attempts=max_attempts, deadline=deadline, task_spec_id=task_spec_id,
                    state="queued", attempts=0,
                )
                s.add(run)
                s.flush()
                return from_orm(TaskRunRow, run)
        except StoreError:
            with self._tx("reading a task run") as s:
                run = s.scalar(select(TaskRun).where(TaskRun.idempotency_key == idempotency_key))
                if run is None:
                    raise
                return from_orm(TaskRunRow, run)

    def get_task_run(self, run_id: int) -> TaskRunRow:
        with self._tx("reading a task run") as s:
            run = s.get(TaskRun, run_id)
            if run is None:
                raise StoreError(f"unknown task run id {run_id}")
            return from_orm(TaskRunRow, run)

    def _transition(self, run_id: int, from_states: Sequence[str], **values: Any) -> TaskRunRow | None:
        """Atomically move a run out of `from_states`; None when it was in another state (lost the race)."""
        values.setdefault("updated_at", utcnow())
        with self._tx(f"updating task run {run_id}") as s:
            res = s.execute(
                update(TaskRun).where(TaskRun.id == run_id, TaskRun.state.in_(from_states)).values(**values),
                execution_options={"synchronize_session": False},
            )
            if res.rowcount == 0:
                if s.get(TaskRun, run_id) is None:
                    raise StoreError(f"unknown task run id {run_id}")
                return None
            return from_orm(TaskRunRow, s.get(TaskRun, run_id, populate_existing=True))

    def mark_running(self, run_id: int, worker: str, celery_task_id: str | None = None) -> TaskRunRow | None:
        """Claim a queued run for `worker` (attempts + 1). None if it is not queued (another worker has it,
        or it finished): the caller should then skip the task."""
        now = utcnow()
        return self._transition(
            run_id, ["queued"], state="running", attempts=TaskRun.attempts + 1, worker=worker,
            celery_task_id=celery_task_id, started_at=now, heartbeat_at=now, error=None,
        )

    def heartbeat(self, run_id: int, worker: str | None = None) -> bool:
        """Record that the run's worker is alive; False if the run is no longer running (or not `worker`'s)."""
        with self._tx(f"heartbeat of task run {run_id}") as s:
            q = update(TaskRun).where(TaskRun.id == run_id, TaskRun.state == "running")
            if worker is not None:
                q = q.where(TaskRun.worker == worker)
            now = utcnow()
            return s.execute(q.values(heartbeat_at=now, updated_at=now)).rowcount == 1

    def finish(
        self, run_id: int, state: str, *, error: str | None = None, result: dict[str, Any] | None = None
    ) -> TaskRunRow | None:
        """End a running run as succeeded / failed / dead / cancelled. None if it was not running."""
        if state not in TERMINAL_STATES:
            raise StoreError(f"finish state must be one of {', '.join(TERMINAL_STATES)}, got {state!r}")
        return self._transition(run_id, ["running"], state=state, error=error, result=result, finished_at=utcnow())

    def find_stale(self, older_than: timedelta | float) -> list[TaskRunRow]:
        """Running runs whose last heartbeat is older than `older_than` (seconds or timedelta): their worker died."""
        if not isinstance(older_than, timedelta):
            older_than = timedelta(seconds=float(older_than))
        cutoff = utcnow() - older_than
        with self._tx("finding stale task runs") as s:
            rows = s.scalars(
                select(TaskRun).where(TaskRun.state == "running", TaskRun.heartbeat_at < cutoff).order_by(TaskRun.id)
            )
            return [from_orm(TaskRunRow, r) for r in rows]

    def requeue(self, run_id: int, error: str | None = None) -> TaskRunRow | None:
        """Put a running/failed run back in the queue, or mark it dead once it used all its attempts.
        Returns the updated run (look at `.state`), or None if it was in another state."""
        run = self.get_task_run(run_id)
        if run.attempts >= run.max_attempts:
            return self.mark_dead(run_id, error or f"gave up after {run.attempts} attempts")
        return self._transition(run_id, ["running", "failed"], state="queued", worker=None, error=error)

    def mark_dead(self, run_id: int, error: str) -> TaskRunRow | None:
        """Give up on a run (poison task or out of attempts)."""
        return self._transition(
            run_id, ["queued", "running", "failed"], state="dead", error=error, finished_at=utcnow()
        )

    def cancel(self, run_id: int, reason: str = "cancelled") -> TaskRunRow | None:
        """Cancel a queued or running run; None if it already finished."""
        return self._transition(run_id, ["queued", "running"], state="cancelled", error=reason, finished_at=utcnow())

    def task_runs(self, state: str | None = None, limit: int = 1000) -> list[TaskRunRow]:
        """Runs in the ledger, newest first, optionally only those in `state`."""
        with self._tx("listing task runs") as s:
            q = select(TaskRun).order_by(TaskRun.id.desc()).limit(limit)
            if state is not None:
                q = q.where(TaskRun.state == state)
            return [from_orm(TaskRunRow, r) for r in s.scalars(q)]

    # -- model registry ---------------------------------------------------------------------------
    def register_model(
        self,
        kind: str,
        artifact_uri: str,
        sha256: str,
        config: dict[str, Any],
        *,
        parent_id: int | None = None,
        data_snapshot: dict[str, Any] | None = None,
        training_run_id: int | None = None,
    ) -> ModelVersionRow:
        """Register a checkpoint as the next version of `kind`; returns the new version (`.id`, `.version`)."""
        if kind not in MODEL_KINDS:
            raise StoreError(f"model kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        for attempt in range(5):  # two registrations racing for the same version number: retry
            try:
                with self._tx(f"registering a {kind} version") as s:
                    last = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.kind == kind))
                    mv = ModelVersion(
                        kind=kind, version=(last or 0) + 1, parent_id=parent_id, artifact_uri=artifact_uri,
                        sha256=sha256, config=config, config_hash=config_hash, data_snapshot=data_snapshot or {},
                        training_run_id=training_run_id,
                    )
                    s.add(mv)
                    s.flush()
                    return from_orm(ModelVersionRow, mv)
            except StoreError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def get_model(self, kind: str, version: int) -> ModelVersionRow:
        """Version `version` of `kind` (StoreError if there is none)."""
        with self._tx("reading a model version") as s:
            mv = s.scalar(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version))
            if mv is None:
                raise StoreError(f"unknown {kind} version {version}")
            return from_orm(ModelVersionRow, mv)

    def get_model_by_id(self, model_version_id: int) -> ModelVersionRow:
        with self._tx("reading a model version") as s:
            mv = s.get(ModelVersion, model_version_id)
            if mv is None:
                raise StoreError(f"unknown model version id {model_version_id}")
            return from_orm(ModelVersionRow, mv)

    def list_models(self, kind: str | None = None) -> list[ModelVersionRow]:
        with self._tx("listing model versions") as s:
            q = select(ModelVersion).order_by(ModelVersion.kind, ModelVersion.version)
            if kind is not None:
                q = q.where(ModelVersion.kind == kind)
            return [from_orm(ModelVersionRow, m) for m in s.scalars(q)]

    def set_alias(self, kind: str, alias: str, model_version_id: int, reason: str = "") -> None:
        """Point `alias` (e.g. champion) of `kind` at a version, appending the move to the alias history."""
        with self._tx(f"setting alias {kind}/{alias}") as s:
            mv = s.get(ModelVersion, model_version_id)
            if mv is None or mv.kind != kind:
                raise StoreError(f"model version id {model_version_id} is not a {kind} version")
            row = s.scalar(select(Alias).where(Alias.kind == kind, Alias.alias == alias).with_for_update())
            previous = row.model_version_id if row else None
            if row is None:
                s.add(Alias(kind=kind, alias=alias, model_version_id=model_version_id))
            else:
                row.model_version_id, row.updated_at = model_version_id, utcnow()
            s.add(AliasHistory(kind=kind, alias=alias, model_version_id=model_version_id,
                               previous_version_id=previous, reason=reason))

    def get_alias(self, kind: str, alias: str) -> ModelVersionRow | None:
        """The version `alias` points at, or None if the alias was never set."""
        with self._tx(f"reading alias {kind}/{alias}") as s:
            mv = s.scalar(select(ModelVersion).join(Alias).where(Alias.kind == kind, Alias.alias == alias))
            return from_orm(ModelVersionRow, mv) if mv else None

    def alias_history(self, kind: str, alias: str) -> list[AliasChange]:
        """Every move of the alias, oldest first."""
        with self._tx(f"reading alias history {kind}/{alias}") as s:
            rows = s.scalars(
                select(AliasHistory).where(AliasHistory.kind == kind, AliasHistory.alias == alias)
                .order_by(AliasHistory.id)
            )
            return [from_orm(AliasChange, r) for r in rows]

    # -- training runs and evaluations -------------------------------------------------------------
    def start_training_run(
        self, kind: str, config: dict[str, Any], data_snapshot: dict[str, Any] | None = None,
        task_run_id: int | None = None,
    ) -> int:
        """Record that training of `kind` started; returns the training run id."""
        with self._tx("starting a training run") as s:
            run = TrainingRun(kind=kind, config=config, data_snapshot=data_snapshot or {}, task_run_id=task_run_id)
            s.add(run)
            s.flush()
            return run.id

    def finish_training_run(
        self, run_id: int, state: str = "succeeded", metrics: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """Close a training run as succeeded or failed, with its final metrics."""
        if state not in ("succeeded", "failed"):
            raise StoreError(f"training run state must be succeeded or failed, got {state!r}")
        with self._tx("finishing a training run") as s:
            run = s.get(TrainingRun, run_id)
            if run is None:
                raise StoreError(f"unknown training run id {run_id}")
            run.state, run.metrics, run.error, run.finished_at = state, metrics or {}, error, utcnow()

    def training_run(self, run_id: int) -> TrainingRunRow:
        """Training run `run_id` with its recipe and metrics (StoreError if there is none)."""
        with self._tx("reading a training run") as s:
            run = s.get(TrainingRun, run_id)
            if run is None:
                raise StoreError(f"unknown training run id {run_id}")
            return from_orm(TrainingRunRow, run)

    def record_evaluation(
        self, suite: str, model_version_id: int | None, metric: str, value: float, n: int = 0, *,
        ci_low: float | None = None, ci_high: float | None = None, details: dict[str, Any] | None = None,
    ) -> int:
        """Record one metric of a model version on a suite (e.g. success_rate on in_distribution)."""
        with self._tx("recording an evaluation") as s:
            ev = Evaluation(suite=suite, model_version_id=model_version_id, metric=metric, value=float(value),
                            n=n, ci_low=ci_low, ci_high=ci_high, details=details or {})
            s.add(ev)
            s.flush()
            return ev.id

    def evaluations(self, model_version_id: int | None = None, suite: str | None = None) -> list[dict[str, Any]]:
        """Recorded evaluations as plain dicts, oldest first."""
        with self._tx("listing evaluations") as s:
            return queries.list_evaluations(s, model_version_id=model_version_id, suite=suite)


def resolve_urls(db_cfg: Any, data_dir: str | Path) -> tuple[str, str]:
    """(database URL, artifact URL) for a DBConfig, filling in the embedded defaults under `data_dir`."""
    data_dir = Path(data_dir).expanduser().resolve()
    url = db_cfg.url or f"sqlite:///{data_dir / SQLITE_FILE}"
    artifact_url = db_cfg.artifact_url or str(data_dir / ARTIFACT_DIR)
    return url, artifact_url


def _episode_values(rec: EpisodeRecord, now: datetime) -> dict[str, Any]:
    if type(rec) is EpisodeRecord:  # the common case, and 15x faster (bulk inserts)
        values = rec.__dict__.copy()
    else:
        values = {name: getattr(rec, name) for name in _EPISODE_COLUMNS}
    if values["created_at"] is None:
        values["created_at"] = now
    return values


def _candidate_values(episode_id: int, c: CandidateRecord) -> dict[str, Any]:
    return {"episode_id": episode_id, "created_at": utcnow(), **{f.name: getattr(c, f.name) for f in fields(c)}}


def _upsert_rollups(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Add `rows` (episode column dicts) to the per-day rollup, in the caller's transaction."""
    agg: dict[tuple, list] = {}
    for r in rows:
        created = r["created_at"]
        key = (created.date() if created.tzinfo in (None, UTC) else _utc_date(created), r["task_family"],
               r["world_model_version_id"] or 0, r["idm_version_id"] or 0, r["backend"], r["policy"], r["source"])
        acc = agg.get(key)
        if acc is None:
            agg[key] = acc = [0, 0, 0.0]
        acc[0] += 1
        acc[1] += bool(r["success"])
        acc[2] += float(r["reward"] or 0.0)
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    t = EpisodeRollup.__table__
    stmt = dialect_insert(t)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_ROLLUP_KEY),
        set_={"n": t.c.n + stmt.excluded.n, "n_success": t.c.n_success + stmt.excluded.n_success,
              "reward_sum": t.c.reward_sum + stmt.excluded.reward_sum},
    )
    values = [dict(zip(_ROLLUP_KEY, k), n=a[0], n_success=a[1], reward_sum=a[2]) for k, a in sorted(agg.items())]
    session.connection().execute(stmt, values)


def _utc_date(dt: datetime) -> date:
    return dt.astimezone(UTC).date()
