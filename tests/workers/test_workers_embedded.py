"""Real worker processes on the embedded broker (SQLite, no server): episodes end to end, hostile
messages, cancel before and during a run, and a worker SIGKILLed mid-episode."""
from __future__ import annotations

import time
import uuid

import pytest

from workers.pool import WorkerPool
from workers.rejects import read_rejects


@pytest.fixture(scope="module")
def pool(tmp_path_factory, make_config):
    cfg = make_config(tmp_path_factory.mktemp("embedded") / "data")
    with WorkerPool(cfg, n=1, queues=["sim", "train", "eval"]) as p:
        yield p


def wait_state(sched, run_id, state, timeout=60.0):
    deadline = time.monotonic() + timeout
    while (row := sched.status(run_id)).state != state:
        assert time.monotonic() < deadline, f"run {run_id} still {row.state}, wanted {state}"
        time.sleep(0.05)
    return row


def test_episodes_end_to_end(pool):
    sched = pool.scheduler
    ids = sched.enqueue({"family": "pick", "seed": 11, "attempts": 2, "policy": "scripted_expert", "max_steps": 30})
    rows = sched.wait(ids, timeout=90)
    assert [r.state for r in rows] == ["succeeded", "succeeded"], [r.error for r in rows]
    for row in rows:
        ep = sched.store.get_episode(row.result["episode_id"])
        assert ep.task_run_id == row.id and ep.backend == "sim"
        arrays = sched.store.load_arrays(ep.id)
        assert arrays["frames"].shape[0] == arrays["actions"].shape[0] + 1 == ep.length + 1


def test_hostile_messages_are_rejected_recorded_and_the_worker_keeps_serving(pool):
    sched, app = pool.scheduler, pool.scheduler.app
    q = sched.cfg.broker.queue_prefix + "sim"
    before = len(read_rejects(sched.cfg.data_path, last=1000))
    app.send_task("flywheel.noop", kwargs={"run_id": 1, "attempt": 1, "payload": {}}, queue=q, serializer="pickle")
    app.send_task("flywheel.noop", kwargs={"run_id": "1; DROP TABLE", "attempt": 1, "payload": {}}, queue=q)
    app.send_task("flywheel.noop", kwargs={"run_id": 1, "attempt": 1, "payload": {}, "shell": "rm -rf /"}, queue=q)
    app.send_task("flywheel.noop", kwargs={"run_id": 1, "attempt": 1, "payload": {"tags": ["x" * 200_000]}}, queue=q)
    app.send_task("flywheel.noop", kwargs={"run_id": 999_999, "attempt": 1, "payload": {"tags": []}}, queue=q)
    app.send_task("flywheel.not_a_task", kwargs={}, queue=q)
    [run_id] = sched.enqueue({"kind": "noop"})  # queued behind the hostile ones
    assert sched.wait([run_id], timeout=60)[0].state == "succeeded"
    rejects = read_rejects(sched.cfg.data_path, last=1000)[before:]
    reasons = " | ".join(r["reason"] for r in rejects)
    assert len(rejects) == 6, reasons
    for words in ("pickle", "run_id", "shell", "exceeds", "unknown task run id 999999", "unknown task"):
        assert words in reasons, words


def test_cancel_before_it_runs(pool):
    sched = pool.scheduler
    row = sched.store.create_task_run("flywheel.noop", uuid.uuid4().hex, {"tags": []},
                                      queue=sched.cfg.broker.queue_prefix + "sim")
    assert sched.cancel(row.id)
    sched.send(row)
    [probe] = sched.enqueue({"kind": "noop"})  # once this ran, the cancelled message was consumed
    sched.wait([probe], timeout=60)
    after = sched.status(row.id)
    assert after.state == "cancelled" and after.attempts == 0


def test_cancel_during_a_run(pool):
    sched = pool.scheduler
    [run_id] = sched.enqueue({"family": "pick", "seed": 3, "policy": "random"})  # 400 steps
    wait_state(sched, run_id, "running")
    assert sched.cancel(run_id)
    [probe] = sched.enqueue({"kind": "noop"})  # concurrency 1: runs only once the episode stopped
    assert sched.wait([probe], timeout=60)[0].state == "succeeded"
    row = sched.status(run_id)
    assert row.state == "cancelled"
    assert not [e for e in sched.store.episodes() if e.task_run_id == run_id]


def test_worker_sigkilled_mid_episode_is_reexecuted_once(tmp_path, make_config):
    cfg = make_config(tmp_path / "data")
    with WorkerPool(cfg, n=1, queues=["sim"]) as pool:
        sched = pool.scheduler
        [run_id] = sched.enqueue({"family": "pick", "seed": 4, "policy": "random", "max_steps": 150})
        first = wait_state(sched, run_id, "running")
        time.sleep(0.5)
        pool.kill(0)  # SIGKILL to the worker and its pool child, mid-episode
        pool.start_worker(0)
        pool.wait_ready()
        [row] = sched.wait([run_id], timeout=120)
    assert row.state == "succeeded", row.error
    assert row.attempts == 2 and row.worker != first.worker
    assert len([e for e in sched.store.episodes() if e.task_run_id == run_id]) == 1
