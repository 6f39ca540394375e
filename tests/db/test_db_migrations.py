"""Migrations and models agree (an `alembic check`), and stores at another revision are refused."""
from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

import db.schema
from db.engine import make_engine
from db.errors import SchemaError
from db.models import Base
from db.schema import alembic_config, check_schema, current_revision, head_revision, upgrade
from db.store import ExperienceStore


def test_migrations_match_models(db_url):
    engine = make_engine(db_url)
    assert upgrade(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree (write a migration): {diff}"


def test_constraint_names_follow_the_convention(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    insp = inspect(engine)
    assert insp.get_pk_constraint("episodes")["name"] in ("pk_episodes", None)  # SQLite does not keep PK names
    fk_names = {fk["name"] for fk in insp.get_foreign_keys("episodes")}
    assert "fk_episodes_task_run_id_task_runs" in fk_names
    indexes = {ix["name"] for ix in insp.get_indexes("episodes")}
    assert "ix_episodes_task_model_backend_time" in indexes
    engine.dispose()


def test_empty_store_is_refused_with_the_upgrade_hint(db_url, tmp_path):
    with pytest.raises(SchemaError, match="is empty.*flywheel db upgrade"):
        ExperienceStore.open(db_url, str(tmp_path / "a"))


def test_older_revision_is_refused(db_url, tmp_path, monkeypatch):
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    # this code now "needs" a newer revision than the store has
    monkeypatch.setattr(db.schema, "head_revision", lambda: "0002")
    with pytest.raises(SchemaError, match="at revision '0001', this code needs '0002'; run `flywheel db upgrade`"):
        ExperienceStore.open(db_url, str(tmp_path / "a"))


def test_unknown_revision_is_refused(db_url, tmp_path):
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(SchemaError, match="unknown to this code"):
        check_schema(engine)
    engine.dispose()


def test_downgrade_to_base_then_upgrade(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    check_schema(engine)
    engine.dispose()
