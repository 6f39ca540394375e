"""`flywheel db upgrade|stats`, `flywheel episodes`, `flywheel episode ID`: tables, JSON, one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from db.records import EpisodeRecord
from db.store import ExperienceStore
from flywheel.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def data_dir(tmp_path, capsys):
    """A data dir with an upgraded store holding three episodes."""
    rc, out, _ = _run(capsys, "db", "upgrade", f"data_dir={tmp_path}")
    assert rc == 0 and "revision 0001" in out
    store = ExperienceStore.open(f"sqlite:///{tmp_path / 'store.sqlite'}", str(tmp_path / "artifacts"))
    wm = store.register_model("world_model", "x", "e" * 64, {})
    store.set_alias("world_model", "champion", wm.id, "test")
    for i, (task, ok) in enumerate([("pick", True), ("pick", False), ("place", True)]):
        store.record_episode(
            EpisodeRecord(source="rollout", task_family=task, instruction=f"{task} it", policy="imagine_then_act",
                          success=ok, length=3, world_model_version_id=wm.id if i else None),
            {"actions": np.zeros((3, 16), np.float32)},
        )
    store.close()
    return tmp_path


def test_stats_json_and_table(data_dir, capsys):
    rc, out, _ = _run(capsys, "db", "stats", "--json", f"data_dir={data_dir}")
    assert rc == 0
    stats = json.loads(out)
    assert stats["counts"]["episodes"] == 3 and stats["counts"]["successes"] == 2
    by_key = {(r["task_family"], r["world_model_version"]): r for r in stats["success_rates"]}
    assert by_key[("pick", 1)]["rate"] == 0.0 and by_key[("place", 1)]["rate"] == 1.0
    rc, out, _ = _run(capsys, "db", "stats", f"data_dir={data_dir}")
    assert rc == 0 and "success rate" in out and "place" in out


def test_recaption_leaves_episodes_without_a_recorded_start_alone(data_dir, capsys):
    """`db recaption` restores each episode's initial state to describe its scene: these have none."""
    rc, out, _ = _run(capsys, "db", "recaption", "--json", f"data_dir={data_dir}", "policy.caption_upsampler=task")
    assert rc == 0
    assert json.loads(out) == {"upsampler": "task", "episodes": 3, "captioned": 0, "changed": 0, "skipped": 3}
    rc, out, _ = _run(capsys, "episodes", "--json", f"data_dir={data_dir}")
    assert all(r["caption"] is None for r in json.loads(out))
    rc, _, err = _run(capsys, "db", "recaption", f"data_dir={data_dir}", "policy.caption_upsampler=poem")
    assert rc == 1 and "policy.caption_upsampler must be one of scene, task, task_pose, task_pose_fine, openai, got 'poem'" in err


def test_episodes_filters(data_dir, capsys):
    rc, out, _ = _run(capsys, "episodes", "--task", "pick", "--failure", "--json", f"data_dir={data_dir}")
    rows = json.loads(out)
    assert rc == 0 and [(r["task_family"], r["success"]) for r in rows] == [("pick", False)]
    rc, out, _ = _run(capsys, "episodes", "--model", "champion", "--json", f"data_dir={data_dir}")
    assert rc == 0 and len(json.loads(out)) == 2
    rc, out, _ = _run(capsys, "episodes", "--success", f"data_dir={data_dir}")
    assert rc == 0 and "2 episodes" in out


def test_episode_shows_where_its_arrays_are(data_dir, capsys):
    rc, out, _ = _run(capsys, "episode", "1", "--json", f"data_dir={data_dir}")
    info = json.loads(out)
    assert rc == 0 and info["id"] == 1
    assert info["arrays_location"].startswith(str(data_dir / "artifacts")) and info["arrays_location"].endswith(".npz")
    rc, out, _ = _run(capsys, "episode", "1", f"data_dir={data_dir}")
    assert rc == 0 and "arrays_location" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["episode", "99"], "unknown episode id 99"),
        (["episodes", "--model", "nope"], "neither a world-model version number"),
        (["db", "stats", "db.url=mysql://u@h/x"], "unsupported database URL scheme"),
        (["db", "stats", "db.url=postgresql://postgres@127.0.0.1:1/x"], "cannot connect to database"),
    ],
)
def test_errors_are_one_line_with_exit_1(data_dir, capsys, argv, message):
    rc, _, err = _run(capsys, *argv, f"data_dir={data_dir}")
    assert rc == 1
    assert err.count("\n") == 1 and message in err


def test_read_commands_refuse_a_missing_store(tmp_path, capsys):
    rc, _, err = _run(capsys, "db", "stats", f"data_dir={tmp_path / 'fresh'}")
    assert rc == 1 and "flywheel db upgrade" in err
    assert not (tmp_path / "fresh").exists()  # read-only commands create nothing
