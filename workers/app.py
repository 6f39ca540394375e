"""The one Celery app: JSON only, late acks, prefetch 1, time limits, queues and routing.

`create_app(cfg)` builds an app for a config (the scheduler side and tests); `get_app()` is the app
of a worker process, built once from `workers.runtime.load_config()`. `celery -A workers worker`
finds it through `workers.celery` (a lazy attribute of the package).

Queues (each name prefixed with `broker.queue_prefix`): `sim` for simulated episodes,
`neo.<robot_id>` for one robot (run one worker with concurrency 1 per robot), `train` for retraining,
`eval` for evaluation and promotion. Routing is by task spec: see `queue_for`.
"""
from __future__ import annotations

from typing import Any

from celery import Celery

from workers import broker as _broker
from workers.errors import WorkerError

APP_NAME = "flywheel"


def logical_queue(task_name: str, backend: str | None = None) -> str:
    """The queue (without prefix) a task goes to: by backend for episodes, by kind for hooks."""
    if task_name == "flywheel.run_episode":
        if backend is None or backend == "sim":
            return "sim"
        if backend.startswith("neo:"):
            return "neo." + backend.split(":", 1)[1]
        raise WorkerError(f"unknown backend {backend!r}: use 'sim' or 'neo:<robot_id>'")
    if task_name == "flywheel.retrain":
        return "train"
    if task_name in ("flywheel.evaluate", "flywheel.promote"):
        return "eval"
    if task_name == "flywheel.noop":
        return "sim"
    raise WorkerError(f"unknown task {task_name!r}")


def queue_for(cfg: Any, task_name: str, backend: str | None = None) -> str:
    """The broker queue name for a task under this config (prefix included)."""
    return cfg.broker.queue_prefix + logical_queue(task_name, backend)


def worker_queues(cfg: Any, queues: list[str] | None = None) -> list[str]:
    """Broker queue names a worker consumes: `queues` (logical names) or `broker.queues`."""
    names = queues or list(cfg.broker.queues)
    for q in names:
        if q not in ("sim", "train", "eval") and not (q.startswith("neo.") and len(q) > 4):
            raise WorkerError(f"unknown queue {q!r}: use sim, train, eval or neo.<robot_id>")
    return [cfg.broker.queue_prefix + q for q in names]


def celery_settings(cfg: Any) -> dict[str, Any]:
    """Celery settings for `cfg` (a `flywheel.config.Config`)."""
    b = cfg.broker
    return {
        "broker_url": _broker.broker_url(b, cfg.data_path),
        "result_backend": _broker.result_url(b),
        "broker_transport_options": _broker.transport_options(b),
        "result_backend_transport_options": _broker.transport_options(b) if b.result_url else {},
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle message is refused by the worker before anything is deserialised
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # a task is acked after it ran; a worker killed mid-task gives it back (or the sweeper does)
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": b.soft_time_limit_s,
        "task_time_limit": b.time_limit_s,
        "task_ignore_result": True,  # the ledger is the source of truth (flywheel.ping keeps its result)
        "task_default_queue": b.queue_prefix + "sim",
        "task_create_missing_queues": True,
        "task_queue_max_priority": 10,
        "task_default_priority": 0,
        "worker_consumer": "workers.consumer:RecordingConsumer",
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_enable_remote_control": not _broker.is_embedded(b),  # SQL transport has no fanout
        "broker_heartbeat": 0 if _broker.is_embedded(b) else 120,
        "enable_utc": True,
    }


def create_app(cfg: Any) -> Celery:
    """A Celery app for `cfg` (a composed DictConfig, a `flywheel.config.Config` or a WorkerConfig)."""
    from workers.runtime import WorkerConfig, as_config

    if not isinstance(cfg, WorkerConfig):
        cfg = as_config(cfg)
    app = Celery(APP_NAME, set_as_current=False)
    app.conf.update(celery_settings(cfg))
    app.flywheel_config = cfg  # read by the task bodies (workers.tasks)
    interval = _beat_interval(cfg)
    if interval:  # long-running deployments: `celery -A workers beat` checks for due retrains
        app.conf.beat_schedule = {"flywheel-retrain-check": {
            "task": "flywheel.tick", "schedule": interval,
            "options": {"queue": cfg.broker.queue_prefix + "train"}}}
    import workers.tasks  # noqa: F401 - registers the shared tasks

    app.finalize(auto=True)
    return app


def _beat_interval(cfg: Any) -> float | None:
    from workers.runtime import full_config

    return full_config(cfg).flywheel.beat_interval_s


_worker_app: Celery | None = None


def get_app() -> Celery:
    """The app of this process, built from the environment's config (see workers.runtime)."""
    global _worker_app
    if _worker_app is None:
        from workers.runtime import load_config

        _worker_app = create_app(load_config())
        _worker_app.set_current()
        _worker_app.set_default()
    return _worker_app


READY_FILE_ENV = "FLYWHEEL_READY_FILE"


def _touch_ready_file(**_: Any) -> None:
    """When `WorkerPool` started us, tell it we consume (it waits for this file)."""
    import os
    from pathlib import Path

    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(str(os.getpid()))


def _connect_signals() -> None:
    from celery.signals import worker_ready

    worker_ready.connect(_touch_ready_file, weak=False)


_connect_signals()
