"""Engine: SQLite pragmas on every connection, the plain postgresql:// form, bad and unreachable URLs."""
from __future__ import annotations

import time

import pytest

from db.engine import make_engine, normalize_url
from db.errors import StoreError


def test_sqlite_pragmas_are_set_on_every_connection(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 's.sqlite'}", busy_timeout_ms=1234)
    conns = [engine.raw_connection() for _ in range(2)]  # two distinct pooled connections
    for raw in conns:
        cur = raw.cursor()
        assert cur.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
    for raw in conns:
        raw.close()
    engine.dispose()


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg2://u@h/db"])
def test_plain_postgres_url_uses_psycopg3(url):
    assert normalize_url(url).drivername == "postgresql+psycopg"


@pytest.mark.postgres
def test_plain_postgres_url_connects():
    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "invalid database URL"),
        ("mysql://u@h/db", "unsupported database URL scheme 'mysql'"),
        ("postgresql://u@h", "names no database"),
        ("sqlite:////no/such/folder/store.sqlite", "does not exist"),
    ],
)
def test_bad_urls_give_one_clear_message(url, message):
    with pytest.raises(StoreError, match=message) as info:
        make_engine(url)
    assert "\n" not in str(info.value)


def test_unreachable_postgres_fails_fast_with_store_error():
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect to database .*:1/nowhere") as info:
        make_engine("postgresql://postgres:secret@127.0.0.1:1/nowhere")
    assert time.monotonic() - t0 < 10
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
