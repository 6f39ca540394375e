"""Schema revisions: run the Alembic migrations in `db/migrations/` and refuse stores at another revision.

Everything goes through Alembic's Config API with the script folder inside the package, so no
`alembic.ini` is needed anywhere.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect

from db.engine import make_engine, safe_url
from db.errors import SchemaError, StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
UPGRADE_HINT = "run `flywheel db upgrade` (add db.url=... if the store is not the default)"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config pointing at the package's migrations, bound to `connection` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The revision this code needs."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found in db/migrations/versions"
    return head


def current_revision(engine: Engine) -> str | None:
    """The store's revision, or None for a store never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(target: str | Engine, revision: str = "head") -> str:
    """Migrate the store at `target` (URL or Engine) to `revision`; returns the new revision."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any migration failure is one line for the user
        raise StoreError(f"migrating {safe_url(engine.url)!r} failed: {str(exc).splitlines()[0]}") from None
    finally:
        if isinstance(target, str):
            engine.dispose()
    return current_revision(engine) or ""


def is_empty(engine: Engine) -> bool:
    """True when the database has no tables at all (a brand-new store)."""
    return not inspect(engine).get_table_names()


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the store is exactly at the head revision."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    where = safe_url(engine.url)
    if current is None:
        state = "is empty" if is_empty(engine) else "has tables but no schema revision"
        raise SchemaError(f"store {where!r} {state}; {UPGRADE_HINT}")
    script = ScriptDirectory.from_config(alembic_config())
    try:
        known = script.get_revision(current) is not None
    except (RevisionError, CommandError):
        known = False
    if not known:
        raise SchemaError(
            f"store {where!r} is at revision {current!r}, unknown to this code (needs {head!r}); "
            "is it from a newer version of flywheel?"
        )
    raise SchemaError(f"store {where!r} is at revision {current!r}, this code needs {head!r}; {UPGRADE_HINT}")
