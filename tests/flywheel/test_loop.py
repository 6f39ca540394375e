"""The flywheel end to end (real worker processes, tiny configs), its promotion gate, and restarts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from db.store import ExperienceStore
from flywheel.cli import main


def _store(data: Path, url: str | None = None) -> ExperienceStore:
    return ExperienceStore.open(url or f"sqlite:///{data / 'store.sqlite'}", str(data / "artifacts"))


def _check_finished_run(data: Path, store: ExperienceStore) -> dict:
    report = json.loads((data / "reports" / "report.json").read_text())
    assert (data / "reports" / "success.png").stat().st_size > 1000
    assert (data / "reports" / "report.md").read_text().startswith("# Flywheel report")
    history = report["history"]
    assert [h["iteration"] for h in history] == [0, 1]
    assert set(history[0]["champion_success"]) == {"in_distribution", "new_tasks", "ood_objects"}
    assert "McNemar" in history[1]["reason"]
    assert history[0]["held_out"]["world_model"]["psnr"] > 0 and "dtw_ratio" in history[0]["held_out"]["idm"]
    assert report["world_model_evaluator"]["n_policies"] == 2  # the smoke preset's evaluator policies
    assert (data / "reports" / "wm_ranking.png").is_file()
    # bootstrap + one fine-tune of each model, with lineage
    for kind in ("world_model", "idm"):
        versions = store.list_models(kind)
        assert [v.version for v in versions] == [1, 2]
        assert versions[1].parent_id == versions[0].id and versions[0].parent_id is None
        assert versions[1].data_snapshot["phase"] == "iter1"
        assert store.get_alias(kind, "champion") is not None
    sources = {e.source for e in store.episodes(limit=None)}
    assert sources == {"expert", "play", "rollout"}
    # every episode belongs to exactly one ledger run that succeeded
    runs = {r.id: r for r in store.task_runs(limit=10_000)}
    eps = store.episodes(limit=None)
    assert len({e.task_run_id for e in eps}) == len(eps)
    assert all(runs[e.task_run_id].state == "succeeded" for e in eps)
    failed = [(r.name, r.error) for r in runs.values() if r.state != "succeeded"]
    assert not failed, failed  # episodes, training, held-out evaluations, replays of recorded failure states
    replays = [e for e in eps if e.meta.get("replayed_from_episode")]
    assert replays, "the challenger suite replays the champion's recorded failure states"
    rollouts = [e for e in eps if e.source == "rollout"]
    assert rollouts and all(store.candidates(e.id) for e in rollouts if e.length or e.meta.get("failure_reason"))
    return report


def test_flywheel_runs_end_to_end_on_the_embedded_broker(tmp_path, capsys):
    data = tmp_path / "fw"
    assert main(["run", "--quiet", "preset=smoke", f"data_dir={data}"]) == 0
    assert "report:" in capsys.readouterr().out
    with _store(data) as store:
        _check_finished_run(data, store)
        n_eps, n_versions = len(store.episodes(limit=None)), len(store.list_models())
    # running again on a finished data directory adds nothing
    assert main(["run", "--quiet", "preset=smoke", f"data_dir={data}"]) == 0
    with _store(data) as store:
        assert len(store.episodes(limit=None)) == n_eps and len(store.list_models()) == n_versions


def test_flywheel_runs_with_a_world_model_that_imagines_the_joints(tmp_path):
    """`world_model.imagine_joints=true` through the whole loop: the bootstrap and the fine-tune train joint
    channels, the held-out evaluation and the evaluator run, and the planner's candidates are read off the
    imagined joints (one reading each: an IDM spread of exactly 0). With `goal_joints` (grasp and carry goals) the
    trainer reads each episode's goals from its recorded start and every rollout's planner logs the goals it gave."""
    from envs.goals import GOAL_FAMILIES

    data = tmp_path / "fw"
    assert main(["run", "--quiet", "preset=smoke", f"data_dir={data}", "world_model.imagine_joints=true",
                 "world_model.goal_joints=true", "world_model.goal_count=2"]) == 0
    with _store(data) as store:
        _check_finished_run(data, store)
        assert all(v.config["imagine_joints"] and v.config["goal_joints"] for v in store.list_models("world_model"))
        rollouts = [e for e in store.episodes(limit=None) if e.source == "rollout"]
        spreads = [c.scores.get("idm_spread") for e in rollouts for c in store.candidates(e.id)]
        assert spreads and all(s == 0.0 for s in spreads)
        with_goals = [e for e in rollouts if e.task_family in GOAL_FAMILIES]
        assert with_goals and all(len(e.meta["policy_logs"]["grasp_goal"]) == 16 and
                                  len(e.meta["policy_logs"]["carry_goal"]) == 16 for e in with_goals)
        phases = [p.get("goal_phase") for e in with_goals for p in e.meta["plan_steps"]]  # which goal each plan sought
        assert phases and set(phases) <= {"grasp", "carry"}


@pytest.mark.postgres
@pytest.mark.redis
def test_flywheel_runs_on_redis_and_postgresql(tmp_path, redis_url, fresh_pg):
    import redis

    prefix = f"fwtest{uuid.uuid4().hex[:6]}."
    data = tmp_path / "fw"
    try:
        assert main(["run", "--quiet", "preset=smoke", f"data_dir={data}", f"db.url={fresh_pg}",
                     f"broker.url={redis_url}", f"broker.queue_prefix={prefix}"]) == 0
        assert not (data / "store.sqlite").exists()
        with _store(data, fresh_pg) as store:
            _check_finished_run(data, store)
    finally:
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"*{prefix}*"):
            r.delete(key)


@pytest.fixture
def fresh_pg():
    from _services import fresh_pg_database

    with fresh_pg_database("fw_loop") as url:
        yield url


def test_interrupted_run_continues_without_duplicates(tmp_path):
    """SIGINT mid-iteration, then the same command again: nothing is duplicated, the run completes."""
    data = tmp_path / "fw"
    cmd = [sys.executable, "-m", "flywheel.cli", "run", "preset=smoke", f"data_dir={data}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a shell that starts the tests in the background (`cmd &`) ignores SIGINT, and an ignored signal stays
    # ignored in the child; a handled one is reset to the default at exec, which Python turns into
    # KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # interrupt once the first iteration's rollouts are under way
        seen.append(line)
        if "iteration 1:" in line or time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=180)
    assert proc.returncode != 0, "".join(seen)
    assert not (data / "reports" / "report.json").exists()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    with _store(data) as store:
        _check_finished_run(data, store)
        assert len(store.episodes(source="expert", limit=None)) == 4  # the smoke preset's bootstrap, once
        play = store.episodes(source="play", limit=None)  # 2 play + 1 perturbed expert + 1 recovery expert
        assert sorted(e.policy for e in play) == ["perturbed_expert", "play", "play", "recovery_expert"]
        (rec,) = [e for e in play if e.policy == "recovery_expert"]
        assert 4 <= rec.meta["policy_logs"]["takeover_step"] < rec.length  # where its clips start
