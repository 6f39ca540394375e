"""Real workers on Redis with the PostgreSQL store, and a NEO queue served by the bridge on loopback.

Each test session uses its own PostgreSQL database, Redis database 11 and a random queue prefix, and
removes only its own Redis keys afterwards."""
from __future__ import annotations

import uuid

import pytest

from workers.pool import WorkerPool

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def test_episodes_end_to_end_on_redis_and_postgres(tmp_path, make_config, redis_url, pg_url):
    from _services import redis_cleanup

    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg = make_config(tmp_path / "data", f"broker.url={redis_url}", f"broker.queue_prefix={prefix}", f"db.url={pg_url}")
    try:
        with WorkerPool(cfg, n=1, queues=["sim"]) as pool:
            sched = pool.scheduler
            assert sched.app.conf.broker_transport_options["visibility_timeout"] > cfg.broker.time_limit_s
            ids = sched.enqueue({"family": "place", "seed": 21, "attempts": 2, "policy": "scripted_expert", "max_steps": 30})
            rows = sched.wait(ids, timeout=90)
            assert [r.state for r in rows] == ["succeeded"] * 2, [r.error for r in rows]
            assert sched.store.engine.dialect.name == "postgresql"
            eps = [e for e in sched.store.episodes() if e.task_run_id in ids]
            assert len(eps) == 2 and all(sched.store.load_arrays(e.id)["actions"].shape[1] == 16 for e in eps)
            pool.scheduler.app.send_task("flywheel.noop", kwargs={"run_id": 1, "attempt": 1, "payload": {}},
                                         queue=prefix + "sim", serializer="pickle")
            [probe] = sched.enqueue({"kind": "noop"})
            assert sched.wait([probe], timeout=60)[0].state == "succeeded"
    finally:
        redis_cleanup(redis_url, prefix)


def test_neo_queue_runs_against_the_bridge_on_loopback(tmp_path, make_config):
    from envs.config import BackendConfig, EnvConfig
    from envs.neo.bridge import start_bridge

    token = uuid.uuid4().hex
    env_cfg = EnvConfig(image_size=64, max_steps=30)
    bridge = start_bridge(token, env_cfg, BackendConfig(name="neo:r1"), robot_id="r1")
    try:
        cfg = make_config(tmp_path / "data", f"backend.port={bridge.port}", f"backend.token={token}",
                          "policy=random")
        with WorkerPool(cfg, n=1, queues=["neo.r1"]) as pool:
            [run_id] = pool.scheduler.enqueue({"backend": "neo:r1", "family": "pick", "seed": 2, "max_steps": 12})
            [row] = pool.scheduler.wait([run_id], timeout=90)
        assert row.state == "succeeded", row.error
        assert row.queue.endswith("neo.r1")
        ep = pool.scheduler.store.get_episode(row.result["episode_id"])
        assert ep.backend == "neo:r1" and ep.length == 12
    finally:
        bridge.close()
