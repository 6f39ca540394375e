"""The record of messages a worker refused: malformed, hostile, oversize, pickled, unknown task.

A refused message never touches the ledger (it may name a real run it has no right to change); it is
appended as one JSON line to `<data_dir>/rejects.jsonl`, logged, and the worker goes on serving.
`flywheel status --rejects` shows the latest ones.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("workers.rejects")
REJECTS_FILE = "rejects.jsonl"
_MAX_DETAIL = 2000


def rejects_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / REJECTS_FILE


def record_reject(data_dir: str | Path, reason: str, *, task: str | None = None, **detail: Any) -> None:
    """Append one rejected message to the rejects log (never raises: the worker must keep serving)."""
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "task": task,
        "reason": reason[:_MAX_DETAIL],
        **{k: (v if isinstance(v, (int, float, bool, type(None))) else str(v)[:_MAX_DETAIL]) for k, v in detail.items()},
    }
    log.warning("rejected message: %s (task %s)", entry["reason"], task)
    try:
        path = rejects_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # pragma: no cover - a full disk must not stop the worker
        log.error("could not write the rejects log: %s", exc)


def read_rejects(data_dir: str | Path, last: int = 20) -> list[dict[str, Any]]:
    """The `last` rejected messages, oldest first."""
    path = rejects_path(data_dir)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()[-last:]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
