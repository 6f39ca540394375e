"""A Celery consumer that records every message it refuses before it refuses it.

Celery already acks-and-drops what it cannot decode (a pickle message when only JSON is accepted),
and rejects unknown or invalid tasks; this subclass adds the entry in the rejects log
(`workers.rejects`). Installed with the `worker_consumer` setting (see workers/app.py).
"""
from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer

from workers.rejects import record_reject


def _data_dir(app: Any) -> Any:
    cfg = getattr(app, "flywheel_config", None)
    return cfg.data_path if cfg is not None else "."


def _task_name(message: Any) -> str | None:
    try:
        return (message.headers or {}).get("task")
    except Exception:  # noqa: BLE001 - a hostile message may have anything as headers
        return None


class RecordingConsumer(Consumer):
    """Celery's consumer plus a record of each refused message."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        record_reject(
            _data_dir(self.app), f"undecodable message: {type(exc).__name__}: {exc}",
            task=_task_name(message), content_type=getattr(message, "content_type", None),
        )
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        record_reject(_data_dir(self.app), "message in an unknown format", task=_task_name(message))
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_reject(_data_dir(self.app), f"unknown task: {exc}", task=_task_name(message))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_reject(
            _data_dir(self.app), f"invalid task message: {type(exc).__name__}: {exc}",
            task=_task_name(message), content_type=getattr(message, "content_type", None),
        )
        super().on_invalid_task(body, message, exc)
