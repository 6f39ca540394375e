"""Fixtures of the worker tests: configs on the embedded broker, and Redis + a throwaway PostgreSQL
database (started if the servers are down; only our own database and Redis keys are removed)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from _services import fresh_pg_database

# tests/envs (no __init__) must not shadow the envs package as a namespace package
ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[0] != ROOT:
    sys.path.insert(0, ROOT)

@pytest.fixture(scope="session")
def pg_url():
    """A PostgreSQL database created for this session and dropped after it."""
    with fresh_pg_database("fw_workers") as url:
        yield url


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


@pytest.fixture
def scratch(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
