"""Distributed execution: the Celery app, task bodies, ledger, sweeper and the scheduler client.

Celery is known only inside this package. `celery -A workers worker` finds the app as
`workers.celery` (built lazily from the environment's config, see `workers.runtime`).
"""
from __future__ import annotations

from typing import Any

__all__ = ["Scheduler", "TaskSpec", "WorkerError", "WorkerPool"]


def __getattr__(name: str) -> Any:
    if name == "celery":
        from workers.app import get_app

        return get_app()
    if name == "Scheduler":
        from workers.client import Scheduler

        return Scheduler
    if name == "TaskSpec":
        from workers.spec import TaskSpec

        return TaskSpec
    if name == "WorkerPool":
        from workers.pool import WorkerPool

        return WorkerPool
    if name == "WorkerError":
        from workers.errors import WorkerError

        return WorkerError
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
