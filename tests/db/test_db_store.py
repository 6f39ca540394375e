"""Episode writes: arrays then row in one transaction, idempotent by task run, no orphans on failure."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import func, select

from db.errors import ArtifactError, StoreError
from db.models import Candidate, Episode, EpisodeRollup
from db.records import CandidateRecord, EpisodeRecord


def _record(**kw) -> EpisodeRecord:
    base = {"source": "rollout", "task_family": "pick", "instruction": "pick up the red cube",
            "policy": "imagine_then_act", "success": True, "length": 4, "reward": 1.0, "seed": 7, "split": "train",
            "timings": {"plan_s": 0.5}}
    return EpisodeRecord(**{**base, **kw})


def _arrays() -> dict[str, np.ndarray]:
    return {"frames": np.full((5, 8, 8, 3), 7, np.uint8), "actions": np.ones((4, 16), np.float32)}


def _count(store, model) -> int:
    with store.Session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_record_and_load_roundtrip(store):
    ep_id = store.record_episode(_record(), _arrays(), initial_state={"qpos": np.arange(3.0)})
    row = store.get_episode(ep_id)
    assert row.task_family == "pick" and row.success and row.timings == {"plan_s": 0.5}
    assert row.created_at.tzinfo is not None
    np.testing.assert_array_equal(store.load_arrays(ep_id)["actions"], _arrays()["actions"])
    np.testing.assert_array_equal(store.load_initial_state(ep_id)["qpos"], np.arange(3.0))


def test_episode_write_is_idempotent_by_task_run(store):
    run = store.create_task_run("collect_episode", "collect:1")
    first = store.record_episode(_record(task_run_id=run.id), _arrays())
    again = store.record_episode(_record(task_run_id=run.id, success=False), {"other": np.zeros(2)})
    assert again == first
    assert _count(store, Episode) == 1
    assert store.counts()["episodes"] == 1  # the rollup did not count it twice
    assert store.get_episode(first).success is True


def test_concurrent_deliveries_write_one_episode(store):
    run = store.create_task_run("collect_episode", "collect:race")
    ids: list[int] = []
    threads = [threading.Thread(target=lambda: ids.append(store.record_episode(_record(task_run_id=run.id), _arrays())))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 and len(set(ids)) == 1
    assert _count(store, Episode) == 1


def test_failed_write_leaves_no_rows(store):
    dup = [CandidateRecord(plan_step=0, index=0), CandidateRecord(plan_step=0, index=0)]  # violates uniqueness
    with pytest.raises(StoreError, match="recording an episode failed"):
        store.record_episode(_record(), _arrays(), candidates=dup)
    with pytest.raises(StoreError):
        store.record_episode(_record(world_model_version_id=999), _arrays())  # no such model version
    assert _count(store, Episode) == 0
    assert _count(store, Candidate) == 0
    assert _count(store, EpisodeRollup) == 0


def test_invalid_record_is_refused_before_writing(store):
    with pytest.raises(StoreError, match="episode source must be one of"):
        store.record_episode(_record(source="dream"), _arrays())
    assert not store.artifacts.fs.find(store.artifacts.root)


def test_corrupted_arrays_name_the_episode(store):
    ep_id = store.record_episode(_record(), _arrays())
    path = store.artifacts.resolve(store.get_episode(ep_id).artifact_uri)
    store.artifacts.fs.pipe_file(path, b"garbage")
    with pytest.raises(ArtifactError, match=f"episode {ep_id}: artifact .* is corrupt"):
        store.load_arrays(ep_id)
    store.artifacts.fs.rm(path)
    with pytest.raises(ArtifactError, match=f"episode {ep_id}: artifact .* is missing"):
        store.load_arrays(ep_id)
    assert store.get_episode(ep_id).id == ep_id  # the row itself is intact


def test_unknown_episode_id(store):
    with pytest.raises(StoreError, match="unknown episode id 12345"):
        store.get_episode(12345)
    with pytest.raises(StoreError, match="unknown episode id 12345"):
        store.load_arrays(12345)
    with pytest.raises(StoreError, match="unknown episode id 12345"):
        store.record_candidates(12345, [CandidateRecord(plan_step=0, index=0)])


def test_candidates_are_recorded_once(store):
    ep_id = store.record_episode(_record(), _arrays(), candidates=[CandidateRecord(plan_step=0, index=0, chosen=True)])
    more = [CandidateRecord(plan_step=0, index=i, scores={"progress": i / 4}, rejected_reason="collision" if i else None)
            for i in range(3)]
    assert store.record_candidates(ep_id, more) == 2
    assert store.record_candidates(ep_id, more) == 0
    got = store.candidates(ep_id)
    assert [c.index for c in got] == [0, 1, 2] and got[0].chosen and got[2].scores == {"progress": 0.5}


def test_bulk_insert_and_filters(store):
    wm = store.register_model("world_model", "a/b.safetensors", "0" * 64, {"d": 1})
    recs = [_record(success=i % 3 == 0, task_family=("pick", "place")[i % 2], world_model_version_id=wm.id,
                    source=("expert", "rollout")[i % 2]) for i in range(30)]
    assert store.record_episodes_bulk(recs) == 30
    assert store.counts()["episodes"] == 30
    picks = store.episodes(task="pick", limit=None)
    assert len(picks) == 15 and all(r.task_family == "pick" for r in picks)
    fails = store.episodes(success=False, world_model_version=wm.version, limit=None)
    assert len(fails) == 20 and all(r.world_model_version == 1 and not r.success for r in fails)
    assert store.episodes(source="expert", limit=5)[0].id > store.episodes(source="expert", limit=5)[-1].id
    assert store.episodes(backend="neo:robot1") == []


def test_from_config_uses_the_embedded_defaults(tmp_path):
    from db.config import DBConfig
    from db.store import ExperienceStore

    data_dir = tmp_path / "flywheel-data"
    with ExperienceStore.from_config(DBConfig(), data_dir, create=True) as store:
        ep_id = store.record_episode(_record(), _arrays())
        assert store.get_episode(ep_id).artifact_uri is not None
    assert (data_dir / "store.sqlite").is_file()
    assert list((data_dir / "artifacts").glob("*/*.npz"))
    with ExperienceStore.from_config(DBConfig(), data_dir) as store:  # reopening needs no `create`
        assert store.counts()["episodes"] == 1
