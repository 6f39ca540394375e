"""Task ledger state machine, model registry with aliases and history, training runs, evaluations."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from db.errors import StoreError
from db.models import TaskRun, utcnow


def test_task_run_lifecycle(store):
    run = store.create_task_run("collect_episode", "k1", {"seed": 3}, queue="sim", max_attempts=2)
    assert run.state == "queued" and run.attempts == 0 and run.payload == {"seed": 3}
    assert store.create_task_run("collect_episode", "k1").id == run.id  # idempotent by key
    claimed = store.mark_running(run.id, "worker-a", celery_task_id="c-1")
    assert claimed.state == "running" and claimed.attempts == 1 and claimed.worker == "worker-a"
    assert store.mark_running(run.id, "worker-b") is None  # already claimed
    assert store.heartbeat(run.id, "worker-a") and not store.heartbeat(run.id, "worker-b")
    done = store.finish(run.id, "succeeded", result={"episode_id": 1})
    assert done.state == "succeeded" and done.finished_at is not None and done.result == {"episode_id": 1}
    assert store.finish(run.id, "failed") is None  # terminal states are final
    assert not store.heartbeat(run.id)
    with pytest.raises(StoreError, match="finish state must be one of"):
        store.finish(run.id, "exploded")
    with pytest.raises(StoreError, match="unknown task run id 999"):
        store.mark_running(999, "w")


def test_stale_runs_are_requeued_then_dead(store):
    run = store.create_task_run("collect_episode", "k2", max_attempts=2)
    fresh = store.create_task_run("collect_episode", "k3")
    store.mark_running(run.id, "w")
    store.mark_running(fresh.id, "w")
    with store.Session.begin() as s:  # the worker died a minute ago
        s.execute(update(TaskRun).where(TaskRun.id == run.id).values(heartbeat_at=utcnow() - timedelta(minutes=1)))
    assert [r.id for r in store.find_stale(30)] == [run.id]
    again = store.requeue(run.id, error="worker lost")
    assert again.state == "queued" and again.worker is None and again.error == "worker lost"
    store.mark_running(run.id, "w2")
    final = store.requeue(run.id)
    assert final.state == "dead" and "2 attempts" in final.error
    assert store.cancel(fresh.id).state == "cancelled"
    assert store.cancel(fresh.id) is None
    assert {r.state for r in store.task_runs()} == {"dead", "cancelled"}


def test_model_registry_aliases_and_history(store):
    tr = store.start_training_run("world_model", {"steps": 10}, {"episodes": 40})
    v1 = store.register_model("world_model", "aa/aa.safetensors", "a" * 64, {"dim": 8}, training_run_id=tr)
    store.finish_training_run(tr, "succeeded", {"loss": 0.1})
    v2 = store.register_model("world_model", "bb/bb.safetensors", "b" * 64, {"dim": 8}, parent_id=v1.id,
                              data_snapshot={"max_episode_id": 100})
    idm = store.register_model("idm", "cc/cc.safetensors", "c" * 64, {})
    assert (v1.version, v2.version, idm.version) == (1, 2, 1)
    assert v1.config_hash == v2.config_hash and v2.parent_id == v1.id
    assert store.get_alias("world_model", "champion") is None
    store.set_alias("world_model", "champion", v1.id, "bootstrap")
    store.set_alias("world_model", "champion", v2.id, "won paired test p=0.01")
    assert store.get_alias("world_model", "champion").version == 2
    hist = store.alias_history("world_model", "champion")
    assert [(h.model_version_id, h.previous_version_id) for h in hist] == [(v1.id, None), (v2.id, v1.id)]
    assert hist[1].reason.startswith("won")
    with pytest.raises(StoreError, match="is not a world_model version"):
        store.set_alias("world_model", "champion", idm.id)
    with pytest.raises(StoreError, match="model kind must be one of"):
        store.register_model("vae", "x", "y", {})
    assert store.get_model("world_model", 2).sha256 == "b" * 64
    with pytest.raises(StoreError, match="unknown world_model version 9"):
        store.get_model("world_model", 9)


def test_evaluations(store):
    v1 = store.register_model("world_model", "x", "d" * 64, {})
    store.record_evaluation("in_distribution", v1.id, "success_rate", 0.62, 8, ci_low=0.3, ci_high=0.85)
    store.record_evaluation("ood_objects", v1.id, "success_rate", 0.25, 8)
    evs = store.evaluations(model_version_id=v1.id, suite="in_distribution")
    assert len(evs) == 1 and evs[0]["value"] == pytest.approx(0.62) and evs[0]["version"] == 1
