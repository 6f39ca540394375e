"""Store fixtures, parametrized over SQLite (a file in tmp_path) and PostgreSQL (127.0.0.1:5432).

Each PostgreSQL test gets a fresh database `flywheel_test_<random>`, created through the `postgres`
maintenance database and dropped (WITH FORCE) afterwards, so nothing is left behind.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from _services import fresh_pg_database

from db.store import ExperienceStore


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A brand-new empty PostgreSQL database, dropped after the test."""
    with fresh_pg_database() as url:
        yield url


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
