"""The experience store: SQL rows (SQLite or PostgreSQL) plus a content-addressed artifact store.

Public API: `db.store.ExperienceStore`, the boundary dataclasses in `db.records` (EpisodeRecord,
CandidateRecord, ...), `db.artifacts.ArtifactStore`, `db.schema.upgrade`, read-only `db.queries`.
Names are imported lazily so `import db.config` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExperienceStore": "db.store",
    "ArtifactStore": "db.artifacts",
    "EpisodeRecord": "db.records",
    "EpisodeRow": "db.records",
    "CandidateRecord": "db.records",
    "TaskRunRow": "db.records",
    "ModelVersionRow": "db.records",
    "StoreError": "db.errors",
    "ArtifactError": "db.errors",
    "SchemaError": "db.errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'db' has no attribute {name!r}")
