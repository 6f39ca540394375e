"""The Celery beat schedule for long-running deployments: configured from flywheel.beat_interval_s, and its
tick enqueues a retrain (through the ledger) only once K new rollouts have arrived."""
from __future__ import annotations

from omegaconf import OmegaConf

from db.records import EpisodeRecord
from flywheel.hooks import retrain_due
from workers.app import create_app


def _rollouts(store, n):
    store.record_episodes_bulk([EpisodeRecord(source="rollout", task_family="pick", instruction="pick the cube",
                                              policy="imagine_then_act", success=False, length=1) for _ in range(n)])


def test_beat_schedule_follows_config(make_config, tmp_path):
    assert not create_app(make_config(tmp_path / "a")).conf.beat_schedule
    app = create_app(make_config(tmp_path / "b", "flywheel.beat_interval_s=30"))
    entry = app.conf.beat_schedule["flywheel-retrain-check"]
    assert entry["task"] == "flywheel.tick" and entry["schedule"] == 30


def test_tick_enqueues_a_retrain_once_k_rollouts_arrived(make_config, tmp_path):
    from workers.client import Scheduler

    cfg = OmegaConf.to_object(make_config(tmp_path / "d", "flywheel.retrain_every=3"))
    sched = Scheduler(cfg)
    store = sched.store
    _rollouts(store, 2)
    assert retrain_due(cfg, store) is None
    _rollouts(store, 1)
    phase = retrain_due(cfg, store)
    assert phase == f"beat-{store.episodes(limit=1)[0].id}"
    # the task body: what celery beat triggers (run here directly; its enqueue writes the ledger first)
    from unittest import mock

    from workers.tasks import tick_task

    with mock.patch.object(Scheduler, "send"):  # no broker needed to check what is written
        tick_task.app.flywheel_config = cfg
        out = tick_task.run()
        again = tick_task.run()
    assert out["enqueued"] and out["phase"] == phase and again["run_ids"] == out["run_ids"]
    (run,) = [r for r in store.task_runs() if r.name == "flywheel.retrain"]
    assert run.payload["params"] == {"kind": "both", "phase": phase, "parent": "champion"}
