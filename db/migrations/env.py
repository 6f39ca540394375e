"""Alembic environment for the experience store, run programmatically by `db.schema` (no alembic.ini).

The caller passes an open connection in `config.attributes["connection"]`; batch mode is on for
SQLite so ALTERs work there too.
"""
from __future__ import annotations

from alembic import context

from db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("db migrations run through db.schema.upgrade(), which passes a connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; use `flywheel db upgrade`")
run_migrations_online()
