"""Plain dataclasses at the store's boundary: what callers pass in and get back (never ORM objects).

They carry ids and JSON-able values only, so they can cross process boundaries (Celery tasks take ids
and plain JSON) via `to_dict()`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from db.errors import StoreError
from db.models import EPISODE_SOURCES


@dataclass(kw_only=True)
class EpisodeRecord:
    """One episode to record. Arrays go separately to `ExperienceStore.record_episode`.

    `task_run_id` makes the write idempotent (a redelivered task gets the existing episode back);
    it is None for bootstrap data. `created_at` None means now (set it when importing old data).
    """

    source: str  # expert | play | rollout
    task_family: str
    instruction: str
    policy: str
    success: bool
    length: int  # number of actions (T)
    backend: str = "sim"
    reward: float = 0.0
    seed: int | None = None
    split: str | None = None
    caption: str | None = None
    task: dict[str, Any] | None = None  # TaskInstance.to_dict()
    task_run_id: int | None = None
    task_spec_id: int | None = None
    world_model_version_id: int | None = None
    idm_version_id: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    artifact_uri: str | None = None  # set by the store from the arrays; pass only for metadata-only imports
    artifact_sha256: str | None = None
    initial_state_uri: str | None = None
    initial_state_sha256: str | None = None
    created_at: datetime | None = None

    def validate(self) -> None:
        if self.source not in EPISODE_SOURCES:
            raise StoreError(f"episode source must be one of {', '.join(EPISODE_SOURCES)}, got {self.source!r}")
        if self.length < 0:
            raise StoreError(f"episode length must be >= 0, got {self.length}")
        if (self.artifact_uri is None) != (self.artifact_sha256 is None):
            raise StoreError("episode artifact_uri and artifact_sha256 go together")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(kw_only=True)
class EpisodeRow(EpisodeRecord):
    """A recorded episode, as read back from the store."""

    id: int
    created_at: datetime  # type: ignore[assignment]
    world_model_version: int | None = None  # version numbers, for display
    idm_version: int | None = None


@dataclass(kw_only=True)
class CandidateRecord:
    """One imagined candidate at one planning step: its scores, and whether it was chosen (or why not)."""

    plan_step: int
    index: int
    scores: dict[str, float] = field(default_factory=dict)
    chosen: bool = False
    rejected_reason: str | None = None
    artifact_uri: str | None = None
    artifact_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(kw_only=True)
class TaskRunRow:
    """One task in the ledger."""

    id: int
    name: str
    idempotency_key: str
    state: str
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    worker: str | None
    celery_task_id: str | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    task_spec_id: int | None
    deadline: datetime | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(kw_only=True)
class TrainingRunRow:
    """One training job: its recipe, the data it saw, and its final metrics."""

    id: int
    kind: str
    state: str
    config: dict[str, Any]
    data_snapshot: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    started_at: datetime
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(kw_only=True)
class ModelVersionRow:
    """One registered checkpoint."""

    id: int
    kind: str
    version: int
    parent_id: int | None
    artifact_uri: str
    sha256: str
    config: dict[str, Any]
    config_hash: str
    data_snapshot: dict[str, Any]
    training_run_id: int | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(kw_only=True)
class AliasChange:
    """One line of an alias's append-only history."""

    kind: str
    alias: str
    model_version_id: int
    previous_version_id: int | None
    reason: str
    created_at: datetime


@dataclass(kw_only=True)
class SuccessRate:
    """Success rate of one group (task x model version x backend) in a time window."""

    task_family: str
    world_model_version: int | None
    backend: str
    n: int
    successes: int

    @property
    def rate(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rate": self.rate}


def _to_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = v.isoformat() if isinstance(v, datetime) else v
    return out


def from_orm(cls: type, obj: Any, **extra: Any) -> Any:
    """Build dataclass `cls` from the same-named attributes of an ORM object."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    return cls(**{n: getattr(obj, n) for n in names if hasattr(obj, n)}, **extra)
