"""Researcher queries: success rates from the rollup agree with the raw episodes, time windows work."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from db.records import EpisodeRecord

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _fill(store) -> list[EpisodeRecord]:
    wm1 = store.register_model("world_model", "x", "1" * 64, {}).id
    wm2 = store.register_model("world_model", "y", "2" * 64, {}).id
    recs = []
    for i in range(120):
        recs.append(EpisodeRecord(
            source="rollout", task_family=("pick", "place", "drawer")[i % 3], instruction="do it",
            policy="imagine_then_act", success=(i * 7) % 5 < 2, length=10, reward=float(i % 2),
            backend=("sim", "neo:r1")[i % 4 == 0], world_model_version_id=(None, wm1, wm2)[i % 3 if i % 2 else 0],
            created_at=T0 + timedelta(hours=7 * i),
        ))
    # half through the bulk path, half one at a time
    store.record_episodes_bulk(recs[:60])
    for r in recs[60:]:
        store.record_episode(r)
    return recs


def _as_tuples(rates):
    return [(r.task_family, r.world_model_version, r.backend, r.n, r.successes) for r in rates]


def test_success_rate_rollup_matches_raw(store):
    recs = _fill(store)
    rollup = store.success_rate()
    assert _as_tuples(rollup) == _as_tuples(store.success_rate(exact=True))
    assert sum(r.n for r in rollup) == len(recs)
    assert sum(r.successes for r in rollup) == sum(r.success for r in recs)
    since, until = T0 + timedelta(days=3), T0 + timedelta(days=10)  # whole days: rollup
    win = store.success_rate(since=since, until=until)
    assert _as_tuples(win) == _as_tuples(store.success_rate(since=since, until=until, exact=True))
    assert sum(r.n for r in win) == sum(since <= r.created_at < until for r in recs)


def test_success_rate_partial_day_window_is_exact(store):
    recs = _fill(store)
    since, until = T0 + timedelta(hours=30), T0 + timedelta(hours=100)
    rates = store.success_rate(since=since, until=until, task="pick")
    expected = [r for r in recs if since <= r.created_at < until and r.task_family == "pick"]
    assert sum(r.n for r in rates) == len(expected) > 0
    assert sum(r.successes for r in rates) == sum(r.success for r in expected)


def test_counts(store):
    recs = _fill(store)
    c = store.counts()
    assert c["episodes"] == len(recs) and c["successes"] == sum(r.success for r in recs)
    assert c["model_versions"] == 2 and c["task_runs"] == 0
