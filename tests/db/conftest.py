"""Store fixtures, parametrized over SQLite (a file in tmp_path) and PostgreSQL (127.0.0.1:5432).

Each PostgreSQL test gets a fresh database `flywheel_test_<random>`, created through the `postgres`
maintenance database and dropped (WITH FORCE) afterwards, so nothing is left behind.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from db.store import ExperienceStore

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _admin():
    return create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A brand-new empty PostgreSQL database, dropped after the test."""
    name = f"flywheel_test_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """An empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url, tmp_path) -> Iterator[ExperienceStore]:
    """A migrated store with its artifacts in tmp_path."""
    s = ExperienceStore.open(db_url, str(tmp_path / "artifacts"), create=True)
    try:
        yield s
    finally:
        s.close()
