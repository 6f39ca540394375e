"""Fixtures of the worker tests: configs on the embedded broker, and Redis + a throwaway PostgreSQL
database (started if the servers are down; only our own database and Redis keys are removed)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# tests/envs (no __init__) must not shadow the envs package as a namespace package
ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[0] != ROOT:
    sys.path.insert(0, ROOT)

REDIS_DB = 11  # a Redis database number of our own; keys are also namespaced by a random queue prefix
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ensure(port: int, command: str, timeout: float = 30.0) -> None:
    if _port_open(port):
        return
    subprocess.run(command, shell=True, check=False, capture_output=True)
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"service on port {port} did not start with: {command}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def redis_url() -> str:
    _ensure(6379, 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
                  "--dir /var/lib/redis --logfile /var/log/redis/ci.log")
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


@pytest.fixture(scope="session")
def pg_url():
    """A PostgreSQL database created for this session and dropped after it."""
    _ensure(5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
    import psycopg

    name = f"fw_workers_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_cfg(data_dir: Path, *extra: str):
    """A small, fast config: short heartbeats so the sweeper acts within seconds."""
    from flywheel.compose import compose

    return compose([
        f"data_dir={data_dir}", "policy=scripted_expert", "env.max_steps=400",
        "broker.heartbeat_s=0.3", "broker.stale_after_s=2.0", "broker.max_retries=1",
        "broker.soft_time_limit_s=120", "broker.time_limit_s=150", *extra,
    ])


@pytest.fixture(scope="session")
def make_config():
    """`make_config(data_dir, *overrides)`: the tests' small config."""
    return make_cfg


@pytest.fixture
def cfg(tmp_path):
    return make_cfg(tmp_path / "data")


@pytest.fixture(scope="session", autouse=True)
def _render_env():
    os.environ.setdefault("MUJOCO_GL", "egl")
    yield


def redis_cleanup(url: str, prefix: str) -> None:
    """Delete only the Redis keys of our queue prefix."""
    import redis

    r = redis.Redis.from_url(url)
    for key in r.scan_iter(match=f"*{prefix}*"):
        r.delete(key)


@pytest.fixture
def scratch(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
