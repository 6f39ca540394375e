"""Engine and session factory: SQLite (the embedded default) or PostgreSQL, checked on open.

SQLite connections get WAL, a busy timeout and foreign keys on EVERY connection (an event listener),
since these pragmas are per connection. The plain `postgresql://user@host/db` form a user would type
is rewritten to the psycopg (v3) driver this project installs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import StoreError

_PG_NAMES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}
CONNECT_TIMEOUT_S = 5


def normalize_url(url: str | URL) -> URL:
    """Parse and validate a database URL; `postgresql://` becomes `postgresql+psycopg://`."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError) as exc:
        raise StoreError(
            f"invalid database URL {str(url)!r}: expected sqlite:///path/to/store.sqlite or "
            f"postgresql://user@host:5432/dbname ({exc})"
        ) from None
    name = parsed.drivername
    if name in _PG_NAMES:
        if not parsed.database:
            raise StoreError(f"database URL {safe_url(parsed)!r} names no database (postgresql://user@host/dbname)")
        return parsed.set(drivername="postgresql+psycopg")
    if name in ("sqlite", "sqlite+pysqlite"):
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            parent = Path(db).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"SQLite store {db!r}: folder {parent} does not exist")
        return parsed
    raise StoreError(
        f"unsupported database URL scheme {name!r} in {safe_url(parsed)!r}: use sqlite:///path or postgresql://..."
    )


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def _sqlite_pragmas(busy_timeout_ms: int):
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return on_connect


def make_engine(
    url: str | URL, *, echo: bool = False, busy_timeout_ms: int = 30_000, pool_size: int = 5, check: bool = True
) -> Engine:
    """An Engine for `url`; with `check`, connect once so a bad host or path fails here as StoreError."""
    parsed = normalize_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.drivername.startswith("postgresql"):
        kwargs.update(
            pool_size=pool_size,
            pool_pre_ping=True,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use database URL {safe_url(parsed)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms))
    if check:
        check_connection(engine)
    return engine


def check_connection(engine: Engine) -> None:
    """Connect once; any failure becomes one StoreError line naming the database."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot connect to database {safe_url(engine.url)!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(orig).__name__


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for `engine`; objects stay readable after commit (we convert them to dataclasses)."""
    return sessionmaker(engine, expire_on_commit=False)
