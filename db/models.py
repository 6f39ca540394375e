"""SQLAlchemy 2.0 models of the experience store: the task ledger, episodes, candidates, the model
registry (versions, aliases and their history), training runs and evaluations.

Large arrays never live here: rows hold an artifact URI and its sha256 (see `db.artifacts`).
Every timestamp is UTC (`UTCDateTime`). Schema changes go through Alembic (`db/migrations/`); the
test suite checks that these models and the migrations agree.
"""
from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TASK_RUN_STATES = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "dead", "cancelled")
EPISODE_SOURCES = ("expert", "play", "rollout")
MODEL_KINDS = ("world_model", "idm", "policy")
TRAINING_STATES = ("running", "succeeded", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive; we add UTC back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}  # noqa: RUF012


class TaskSpec(Base):
    """A task instance (`envs.tasks.TaskInstance.to_dict()`), shared by the runs that attempt it."""

    __tablename__ = "task_specs"

    id: Mapped[int] = mapped_column(primary_key=True)
    family: Mapped[str] = mapped_column(String(32))
    instruction: Mapped[str] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(Integer)
    split: Mapped[str | None] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    runs: Mapped[list[TaskRun]] = relationship(back_populates="task_spec")


class TaskRun(Base):
    """The ledger: one row per enqueued task, the source of truth for its state and attempts."""

    __tablename__ = "task_runs"
    __table_args__ = (
        CheckConstraint(_in("state", TASK_RUN_STATES), name="state"),
        Index("ix_task_runs_state_heartbeat", "state", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # the task's name, e.g. "collect_episode"
    task_spec_id: Mapped[int | None] = mapped_column(ForeignKey("task_specs.id"))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str] = mapped_column(String(64), default="default")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(128))
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    deadline: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    task_spec: Mapped[TaskSpec | None] = relationship(back_populates="runs")
    episode: Mapped[Episode | None] = relationship(back_populates="task_run")


class ModelVersion(Base):
    """One trained checkpoint (safetensors + JSON config) with its lineage and training data."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("kind", "version", name="uq_model_versions_kind_version"),
        CheckConstraint(_in("kind", MODEL_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config_hash: Mapped[str] = mapped_column(String(64))
    data_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    parent: Mapped[ModelVersion | None] = relationship(remote_side=[id])
    training_run: Mapped[TrainingRun | None] = relationship(back_populates="model_versions")
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="model_version")


class Alias(Base):
    """A movable name (`champion`, `challenger`, ...) pointing at one version of a kind."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("kind", "alias", name="uq_aliases_kind_alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    alias: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    model_version: Mapped[ModelVersion] = relationship()


class AliasHistory(Base):
    """Append-only log of every alias move, with the reason (e.g. the promotion test's p-value)."""

    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    alias: Mapped[str] = mapped_column(String(64), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRun(Base):
    """One training job (a stage recipe for the world model, or the IDM), and what it produced."""

    __tablename__ = "training_runs"
    __table_args__ = (CheckConstraint(_in("state", TRAINING_STATES), name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    task_run_id: Mapped[int | None] = mapped_column(ForeignKey("task_runs.id"))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    model_versions: Mapped[list[ModelVersion]] = relationship(back_populates="training_run")


class Episode(Base):
    """One attempt at a task on a backend, success or failure; arrays live in the artifact store."""

    __tablename__ = "episodes"
    __table_args__ = (
        CheckConstraint(_in("source", EPISODE_SOURCES), name="source"),
        # success rate by task x model version x backend over time: an index-only scan
        Index(
            "ix_episodes_task_model_backend_time",
            "task_family", "world_model_version_id", "backend", "created_at", "success",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # NULL for bootstrap data; otherwise UNIQUE, so a redelivered task never writes a second episode
    task_run_id: Mapped[int | None] = mapped_column(ForeignKey("task_runs.id"), unique=True)
    task_spec_id: Mapped[int | None] = mapped_column(ForeignKey("task_specs.id"))
    source: Mapped[str] = mapped_column(String(16))
    backend: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(64))
    world_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    idm_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    task_family: Mapped[str] = mapped_column(String(32))
    split: Mapped[str | None] = mapped_column(String(32))
    instruction: Mapped[str] = mapped_column(Text)
    caption: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(Integer)
    task: Mapped[dict[str, Any] | None]
    initial_state_uri: Mapped[str | None] = mapped_column(Text)
    initial_state_sha256: Mapped[str | None] = mapped_column(String(64))
    success: Mapped[bool] = mapped_column(Boolean)
    reward: Mapped[float] = mapped_column(Float, default=0.0)
    length: Mapped[int] = mapped_column(Integer)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    task_run: Mapped[TaskRun | None] = relationship(back_populates="episode")
    candidates: Mapped[list[Candidate]] = relationship(back_populates="episode")


class EpisodeRollup(Base):
    """Per-day counts by task x world model x IDM x backend x policy, updated in the transaction that
    inserts the episodes, so success-rate queries read a few hundred rows instead of millions.
    Version id 0 stands for "none" (so the key has no NULLs and upserts match)."""

    __tablename__ = "episode_rollups"
    __table_args__ = (
        UniqueConstraint(
            "day", "task_family", "world_model_version_id", "idm_version_id", "backend", "policy", "source",
            name="uq_episode_rollups_key",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    task_family: Mapped[str] = mapped_column(String(32))
    world_model_version_id: Mapped[int] = mapped_column(Integer)
    idm_version_id: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(Integer)
    n_success: Mapped[int] = mapped_column(Integer)
    reward_sum: Mapped[float] = mapped_column(Float)


class Candidate(Base):
    """One imagined candidate at one planning step of an episode: its scores and whether it was chosen."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("episode_id", "plan_step", "index", name="uq_candidates_episode_step_index"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id"))
    plan_step: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    chosen: Mapped[bool] = mapped_column(Boolean, default=False)
    rejected_reason: Mapped[str | None] = mapped_column(Text)
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    episode: Mapped[Episode] = relationship(back_populates="candidates")


class Evaluation(Base):
    """One metric of one model version on one suite, with its sample size and confidence interval."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_version_suite_metric", "model_version_id", "suite", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    suite: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer, default=0)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model_version: Mapped[ModelVersion | None] = relationship(back_populates="evaluations")
