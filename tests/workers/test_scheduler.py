"""The scheduler API without a broker: spec validation, the ledger protocol run inline, the sweeper."""
from __future__ import annotations

from datetime import UTC

import pytest

from workers.client import InProcessDispatcher, Scheduler
from workers.errors import WorkerError
from workers.spec import TaskSpec, parse_message
from workers.sweeper import Sweeper


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"backend": "mars"}, "backend"),
        ({"attempts": "3"}, "attempts"),
        ({"attempts": 0}, "attempts"),
        ({"colour": "red"}, "colour"),
        ({"family": "juggle"}, "family"),
        ({"priority": 11}, "priority"),
        ({"split": "new_tasks"}, "split"),
        ({"model": {"alias": "a", "version": 2}}, "model"),
    ],
)
def test_bad_spec_is_refused_naming_the_field(bad, field):
    with pytest.raises(WorkerError, match=field):
        TaskSpec.parse(bad)


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"policy": "teleport"}, "unknown policy 'teleport'"),
        ({"model": "champion"}, "alias 'champion'"),
        ({"model": 7}, "version 7"),
        ({"policy": "imagine_then_act"}, "no world_model has the alias 'champion'"),
        ({"policy": "random", "models": {"idm": 4}}, "idm version 4"),
        ({"policy": "random", "initial_state_episode": 99}, "unknown episode id 99"),
        ({"instruction": "juggle three chainsaws"}, "matches no task"),
    ],
)
def test_unknown_policy_model_or_task_enqueues_nothing(cfg, spec, words):
    sched = Scheduler(cfg, inline=True)
    with pytest.raises(WorkerError, match=words):
        sched.enqueue(spec)
    assert sched.store.task_runs() == []


def test_a_bad_spec_in_a_batch_enqueues_none_of_it(cfg):
    d = InProcessDispatcher(cfg)
    with pytest.raises(WorkerError, match="backend"):
        d.dispatch([{"kind": "noop"}, {"kind": "noop", "backend": "neo:"}])
    assert d.scheduler.store.task_runs() == []


@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        ((1, {}), {}, "positional"),
        ((), {"run_id": "1", "attempt": 1, "payload": {}}, "run_id"),
        ((), {"run_id": 1, "attempt": 1, "payload": {}, "extra": 1}, "extra"),
        ((), {"run_id": 1, "attempt": 1, "payload": {"tags": [], "evil": True}}, "evil"),
        ((), {"run_id": 1, "attempt": 1, "payload": {"tags": ["x" * 70_000]}}, "exceeds"),
    ],
)
def test_worker_side_message_validation(args, kwargs, words):
    with pytest.raises(WorkerError, match=words):
        parse_message("flywheel.noop", args, kwargs, max_bytes=65_536)


def test_inline_episode_is_recorded_with_its_arrays(cfg):
    d = InProcessDispatcher(cfg)
    [run_id] = d.dispatch([{"family": "pick", "seed": 5, "policy": "scripted_expert", "tags": ["unit"], "max_steps": 30}])
    [row] = d.wait([run_id], timeout=5)
    assert row.state == "succeeded", row.error
    store = d.scheduler.store
    [ep] = store.episodes()
    assert ep.task_run_id == run_id and ep.source == "expert" and ep.task_family == "pick"
    arrays = store.load_arrays(ep.id)
    T = ep.length
    assert arrays["frames"].dtype.name == "uint8" and arrays["frames"].shape[0] == T + 1
    assert arrays["proprio"].shape == (T + 1, 32) and arrays["actions"].shape == (T, 16)
    # the expert's episode is captioned by the upsampler imagine-then-act is prompted with, not the bare
    # instruction: the world model trains on the captions it will be given
    assert ep.caption.startswith("Egocentric view") and ep.instruction in ep.caption and "On the table:" in ep.caption


def test_hook_errors_are_recorded_clearly(cfg):
    d = InProcessDispatcher(cfg)
    [run_id] = d.dispatch([{"kind": "retrain"}])  # no params: the hook refuses, naming what it needs
    [row] = d.wait([run_id], timeout=5)
    assert row.state == "failed"
    assert "retrain needs params.kind" in row.error


def test_missing_hook_fails_with_a_clear_recorded_error(cfg, monkeypatch):
    import flywheel.hooks

    monkeypatch.delattr(flywheel.hooks, "evaluate")
    d = InProcessDispatcher(cfg)
    [run_id] = d.dispatch([{"kind": "evaluate"}])
    [row] = d.wait([run_id], timeout=5)
    assert row.state == "failed"
    assert "flywheel.hooks.evaluate" in row.error


def test_cancelled_before_it_runs_is_skipped(cfg):
    sched = Scheduler(cfg, inline=True)
    row = sched.store.create_task_run("flywheel.noop", "k-cancel", {"tags": []}, queue="sim")
    assert sched.cancel(row.id)
    sched.send(row)  # the message arrives after the cancel
    after = sched.status(row.id)
    assert after.state == "cancelled" and after.attempts == 0


def test_sweeper_reexecutes_a_stale_run_exactly_once_then_gives_up(cfg):
    """A worker died after writing the episode but before finishing the run: the sweeper sends it
    again, the re-execution finds the episode already there, and no second one is written."""
    sched = Scheduler(cfg, inline=True)
    [run_id] = sched.enqueue({"family": "pick", "seed": 1, "policy": "scripted_expert", "max_steps": 30})
    assert sched.status(run_id).state == "succeeded"
    store = sched.store
    # pretend the worker died: back to running with an old heartbeat
    from datetime import datetime, timedelta

    from sqlalchemy import update

    from db.models import TaskRun

    def go_stale():
        with store.Session.begin() as s:
            s.execute(update(TaskRun).where(TaskRun.id == run_id).values(
                state="running", heartbeat_at=datetime.now(UTC) - timedelta(seconds=60)))

    go_stale()
    report = Sweeper(sched).sweep_once()
    assert report.requeued == [run_id]
    row = sched.status(run_id)
    assert row.state == "succeeded" and row.attempts == 2
    assert len(store.episodes()) == 1
    go_stale()  # max_retries=1: a second death is final
    report = Sweeper(sched).sweep_once()
    assert report.dead == [run_id]
    row = sched.status(run_id)
    assert row.state == "dead" and "stopped heartbeating" in row.error


def test_a_failed_send_leaves_no_orphan_run(cfg, monkeypatch):
    """The broker fails on the third message: that run is dead, so are the unsent rest of its batch, and
    the error names the key and the runs already sent (they will run)."""
    sched = Scheduler(cfg)
    calls = []

    def flaky(name, **kw):
        calls.append(kw["kwargs"]["run_id"])
        if len(calls) == 3:
            raise OSError("broker went away")

    monkeypatch.setattr(sched.app, "send_task", flaky)
    with pytest.raises(WorkerError, match=r"could not send run .*broker went away.*key 'k1'.*already sent"):
        sched.enqueue({"kind": "noop", "attempts": 5}, key="k1")
    runs = sorted(sched.store.task_runs(), key=lambda r: r.id)
    assert [r.state for r in runs] == ["queued", "queued", "dead", "dead", "dead"]
    assert "could not send" in runs[2].error and all("not sent" in r.error for r in runs[3:])
    assert calls == [r.id for r in runs[:3]]


def test_unreachable_caption_upsampler_fails_the_run_and_records_nothing(make_config, tmp_path):
    """The caption is asked for before the rollout: an upsampler that cannot be reached fails the run with
    its URL, and no half episode is recorded."""
    cfg = make_config(tmp_path / "data", "policy.caption_upsampler=openai", "policy.upsampler_url=http://127.0.0.1:9")
    d = InProcessDispatcher(cfg)
    [run_id] = d.dispatch([{"family": "pick", "seed": 5, "policy": "scripted_expert", "max_steps": 30}])
    [row] = d.wait([run_id], timeout=30)
    assert row.state == "failed" and "127.0.0.1:9" in (row.error or "")
    assert d.scheduler.store.episodes() == []


def test_training_that_failed_in_an_earlier_run_trains_again(cfg, monkeypatch):
    """`flywheel run` again after a training run failed (a crash, a bug since fixed): the trainer's enqueue finds
    the phase's failed run by its key and queues it again with all its attempts, instead of reporting the old
    failure forever; the phase's run that succeeded is not run again. A plain enqueue of the key leaves it."""
    from types import SimpleNamespace

    import flywheel.hooks
    from flywheel.dispatch import DispatchTrainer
    from flywheel.errors import FlywheelError

    calls = []

    def retrain(cfg, store, params, run_id, should_stop, broken=True):
        calls.append(params["params"]["kind"])
        if broken and params["params"]["kind"] == "world_model":
            raise RuntimeError("disk full")
        return {params["params"]["kind"]: {"version": 10 + len(calls)}}

    sched = Scheduler(cfg, inline=True)
    trainer = DispatchTrainer(sched, SimpleNamespace(get=lambda kind, version: (kind, version)))
    monkeypatch.setattr(flywheel.hooks, "retrain", retrain)
    with pytest.raises(FlywheelError, match=r"training world_model \(iter3\) failed: RuntimeError: disk full"):
        trainer.train_pair((None, None), "iter3")
    assert calls == ["world_model", "idm"]
    [wm_run, idm_run] = sorted(sched.store.task_runs(), key=lambda r: r.id)
    spec = {"kind": "retrain", "params": {"kind": "world_model", "phase": "iter3", "parent": None}}
    assert sched.enqueue_many([spec], key="train:iter3") == [[wm_run.id]]  # the same key: the same failed run
    assert sched.status(wm_run.id).state == "failed" and calls == ["world_model", "idm"]

    monkeypatch.setattr(flywheel.hooks, "retrain", lambda *a, **k: retrain(*a, **k, broken=False))
    wm, idm = trainer.train_pair((None, None), "iter3")
    assert calls == ["world_model", "idm", "world_model"]  # the IDM's finished run is not run again
    assert (wm, idm) == (("world_model", 13), ("idm", 12))
    row = sched.status(wm_run.id)
    assert row.state == "succeeded" and row.error is None and row.attempts == 1
    assert sched.status(idm_run.id).attempts == 1


def test_recaption_rewrites_every_captioned_episode_from_its_recorded_start(cfg):
    """`flywheel db recaption`: a store's episodes are captioned again by another upsampler, from the scene at
    their recorded start; a failing upsampler changes nothing (the db CLI test covers episodes without a start)."""
    from flywheel.data import recaption
    from flywheel.errors import FlywheelError
    from policies.captions import SceneCaptionUpsampler, TaskCaptionUpsampler
    from workers.episode import get_backend

    d = InProcessDispatcher(cfg)
    runs = d.dispatch([{"family": fam, "seed": seed, "policy": "scripted_expert", "max_steps": 3}
                       for fam, seed in (("pick", 5), ("place", 6))])
    assert all(r.state == "succeeded" for r in d.wait(runs, timeout=10))
    store = d.scheduler.store
    before = {e.id: e.caption for e in store.episodes()}
    assert all(c.startswith("Egocentric view") for c in before.values())
    backend = get_backend(cfg, "sim")

    class Broken(TaskCaptionUpsampler):
        calls = 0

        def upsample(self, instruction, scene):
            Broken.calls += 1
            if Broken.calls == 2:
                raise RuntimeError("upsampler down")
            return super().upsample(instruction, scene)

    with pytest.raises(FlywheelError, match=r"recaptioning episode \d+ \(sim\) failed: upsampler down"):
        recaption(store, backend, Broken())
    assert {e.id: e.caption for e in store.episodes()} == before  # nothing half-written

    counts = recaption(store, backend, TaskCaptionUpsampler())
    assert counts == {"episodes": 2, "captioned": 2, "changed": 2, "skipped": 0}
    for ep in store.episodes():
        run = store.get_task_run(ep.task_run_id)
        assert ep.caption.startswith(run.payload["task"]["instruction"] + ". The robot reaches with its ")
        assert "Egocentric" not in ep.caption
    # back to the scene upsampler: the very captions the workers wrote
    assert recaption(store, backend, SceneCaptionUpsampler())["changed"] == 2
    assert {e.id: e.caption for e in store.episodes()} == before
    assert recaption(store, backend, SceneCaptionUpsampler())["changed"] == 0


def test_set_captions_refuses_an_unknown_id_or_an_empty_caption(cfg):
    from db.errors import StoreError

    d = InProcessDispatcher(cfg)
    [run] = d.dispatch([{"family": "pick", "seed": 5, "policy": "scripted_expert", "max_steps": 2}])
    d.wait([run], timeout=10)
    store = d.scheduler.store
    [ep] = store.episodes()
    with pytest.raises(StoreError, match="unknown episode id 999"):
        store.set_captions({ep.id: "new words", 999: "x"})
    with pytest.raises(StoreError, match="non-empty"):
        store.set_captions({ep.id: "  "})
    assert store.get_episode(ep.id).caption == ep.caption  # the first, valid caption was not written either


def test_a_retried_run_keeps_the_way_to_its_aborted_attempts(cfg):
    """An attempt that broke off leaves `partial` in the run's result; when the run is retried (the sweeper's
    requeue, or enqueued again with `retry_failed`), whatever the next attempts write, the earlier partials stay
    in `earlier_partials`, in order."""
    from workers import ledger

    store = Scheduler(cfg, inline=True).store
    [run] = ledger.create_runs(store, "flywheel.run_episode", ["k:0:0"], [{"seed": 1}], queue="sim", priority=0,
                               max_attempts=3, deadline=None)

    def attempt(state: str, result: dict | None) -> dict | None:
        _, claimed = ledger.read_and_claim(store, run.id, "w", None, lambda row: True)
        assert claimed and ledger.finish(store, run.id, state, error=None if state == "succeeded" else "x",
                                         result=result)
        return store.get_task_run(run.id).result

    first = {"arrays_uri": "a1", "length": 3}
    assert attempt("failed", {"partial": first}) == {"partial": first}  # nothing earlier: unchanged
    assert store.requeue(run.id).state == "queued"
    second = {"arrays_uri": "a2", "length": 5}
    assert attempt("failed", {"partial": second}) == {"partial": second, "earlier_partials": [first]}
    [again] = ledger.create_runs(store, "flywheel.run_episode", ["k:0:0"], [{"seed": 1}], queue="sim", priority=0,
                                 max_attempts=3, deadline=None, retry_failed=True)
    assert again.state == "queued" and again.attempts == 0 and again.result == {"earlier_partials": [first, second]}
    done = attempt("succeeded", {"episode_id": 7, "success": True})
    assert done == {"episode_id": 7, "success": True, "earlier_partials": [first, second]}
    assert ledger.with_earlier_partials(None, {"episode_id": 1}) == {"episode_id": 1}
