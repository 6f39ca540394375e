"""Read-only researcher queries over the experience store (used by the store and the CLI).

Success rates come from the `episode_rollups` table (per-day counts maintained in the transaction that
inserts episodes), so they cost a few hundred rows whatever the number of episodes. A time window
that does not fall on whole UTC days is answered exactly from `episodes` instead, through the
covering index `ix_episodes_task_model_backend_time`.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import Integer, Select, cast, func, select
from sqlalchemy.orm import Session, aliased

from db.errors import StoreError
from db.models import (
    Candidate,
    Episode,
    EpisodeRollup,
    Evaluation,
    ModelVersion,
    TaskRun,
    TrainingRun,
)
from db.records import EpisodeRow, SuccessRate, from_orm

_WM = aliased(ModelVersion, name="wm")
_IDM = aliased(ModelVersion, name="idm")


def _with_versions(q: Select) -> Select:
    return q.outerjoin(_WM, Episode.world_model_version_id == _WM.id).outerjoin(
        _IDM, Episode.idm_version_id == _IDM.id
    )


def _row(ep: Episode, wm_version: int | None, idm_version: int | None) -> EpisodeRow:
    return from_orm(EpisodeRow, ep, world_model_version=wm_version, idm_version=idm_version)


def get_episode(s: Session, episode_id: int) -> EpisodeRow:
    """One episode with the version numbers of its models; StoreError for an unknown id."""
    q = _with_versions(select(Episode, _WM.version, _IDM.version)).where(Episode.id == episode_id)
    found = s.execute(q).first()
    if found is None:
        raise StoreError(f"unknown episode id {episode_id}")
    return _row(*found)


def list_episodes(
    s: Session,
    *,
    task: str | None = None,
    success: bool | None = None,
    world_model_version: int | None = None,
    idm_version: int | None = None,
    backend: str | None = None,
    split: str | None = None,
    source: str | None = None,
    policy: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 100,
    offset: int = 0,
) -> list[EpisodeRow]:
    """Episodes, newest first, filtered by task family, outcome, world-model / IDM version *number*,
    backend, split, source (expert/play/rollout), policy and time window [since, until)."""
    q = _with_versions(select(Episode, _WM.version, _IDM.version))
    conds = {
        Episode.task_family: task, Episode.success: success, _WM.version: world_model_version,
        _IDM.version: idm_version, Episode.backend: backend, Episode.split: split,
        Episode.source: source, Episode.policy: policy,
    }
    for col, value in conds.items():
        if value is not None:
            q = q.where(col == value)
    if since is not None:
        q = q.where(Episode.created_at >= since)
    if until is not None:
        q = q.where(Episode.created_at < until)
    q = q.order_by(Episode.id.desc()).offset(offset)
    if limit is not None:
        q = q.limit(limit)
    return [_row(*r) for r in s.execute(q)]


def _whole_day(t: datetime | None) -> bool:
    return t is None or (t.astimezone(UTC) if t.tzinfo else t).time() == time(0)


def success_rate(
    s: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    task: str | None = None,
    backend: str | None = None,
    source: str | None = None,
    exact: bool = False,
) -> list[SuccessRate]:
    """Success rate by task x world-model version x backend in [since, until) (UTC).

    From the daily rollup when the window is whole days (or open); from `episodes` when it is not, or
    when `exact` asks for it (the two agree; a test checks that)."""
    if exact or not (_whole_day(since) and _whole_day(until)):
        return _success_rate_raw(s, since, until, task, backend, source)
    r = EpisodeRollup
    q = (
        select(r.task_family, _WM.version, r.backend, func.sum(r.n), func.sum(r.n_success))
        .outerjoin(_WM, r.world_model_version_id == _WM.id)
        .group_by(r.task_family, _WM.version, r.backend)
        .order_by(r.task_family, _WM.version, r.backend)
    )
    if since is not None:
        q = q.where(r.day >= _day(since))
    if until is not None:
        q = q.where(r.day < _day(until))
    for col, value in ((r.task_family, task), (r.backend, backend), (r.source, source)):
        if value is not None:
            q = q.where(col == value)
    return [SuccessRate(task_family=t, world_model_version=v, backend=b, n=int(n), successes=int(k))
            for t, v, b, n, k in s.execute(q)]


def _success_rate_raw(s, since, until, task, backend, source) -> list[SuccessRate]:
    e = Episode
    grouped = select(
        e.task_family, e.world_model_version_id, e.backend,
        func.count().label("n"), func.sum(cast(e.success, Integer)).label("k"),
    ).group_by(e.task_family, e.world_model_version_id, e.backend)
    if since is not None:
        grouped = grouped.where(e.created_at >= since)
    if until is not None:
        grouped = grouped.where(e.created_at < until)
    for col, value in ((e.task_family, task), (e.backend, backend), (e.source, source)):
        if value is not None:
            grouped = grouped.where(col == value)
    g = grouped.subquery()
    q = (
        select(g.c.task_family, _WM.version, g.c.backend, g.c.n, g.c.k)
        .outerjoin(_WM, g.c.world_model_version_id == _WM.id)
        .order_by(g.c.task_family, _WM.version, g.c.backend)
    )
    return [SuccessRate(task_family=t, world_model_version=v, backend=b, n=int(n), successes=int(k or 0))
            for t, v, b, n, k in s.execute(q)]


def _day(t: datetime) -> date:
    return (t.astimezone(UTC) if t.tzinfo else t).date()


def counts(s: Session) -> dict[str, int]:
    """Row counts: episodes (and successes) from the rollup, the other tables directly."""
    n, k = s.execute(select(func.sum(EpisodeRollup.n), func.sum(EpisodeRollup.n_success))).one()
    out = {"episodes": int(n or 0), "successes": int(k or 0)}
    for name, model in (("candidates", Candidate), ("task_runs", TaskRun), ("model_versions", ModelVersion),
                        ("training_runs", TrainingRun), ("evaluations", Evaluation)):
        out[name] = int(s.scalar(select(func.count()).select_from(model)) or 0)
    for state, c in s.execute(select(TaskRun.state, func.count()).group_by(TaskRun.state)):
        out[f"task_runs_{state}"] = int(c)
    return out


def list_evaluations(s: Session, *, model_version_id: int | None = None, suite: str | None = None) -> list[dict[str, Any]]:
    """Evaluations as plain dicts (kind and version number included), oldest first."""
    q = select(Evaluation, ModelVersion.kind, ModelVersion.version).outerjoin(ModelVersion).order_by(Evaluation.id)
    if model_version_id is not None:
        q = q.where(Evaluation.model_version_id == model_version_id)
    if suite is not None:
        q = q.where(Evaluation.suite == suite)
    out = []
    for ev, kind, version in s.execute(q):
        out.append({
            "id": ev.id, "suite": ev.suite, "model_version_id": ev.model_version_id, "kind": kind,
            "version": version, "metric": ev.metric, "value": ev.value, "n": ev.n, "ci_low": ev.ci_low,
            "ci_high": ev.ci_high, "details": ev.details, "created_at": ev.created_at.isoformat(),
        })
    return out
