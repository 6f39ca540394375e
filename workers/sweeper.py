"""The sweeper: finds runs whose worker died (heartbeat older than `broker.stale_after_s`) and sends
them again, up to `broker.max_retries` re-executions; after that the run is marked dead with the reason.

Safe to run on several hosts at once: `requeue` is a compare-and-set in the ledger, so one sweeper wins
each stale run, and a run is claimed by one worker only (`mark_running` from queued). A redelivered
message for a run that already finished is skipped by the worker, and the episode write is idempotent
by run id, so a re-executed run never records a second episode.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("workers.sweeper")


@dataclass
class SweepReport:
    """What one sweep did: the run ids sent again and those given up on."""

    requeued: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)


class Sweeper:
    """Re-enqueue stale runs through `scheduler` (a `workers.client.Scheduler`)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.broker = scheduler.cfg.broker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> SweepReport:
        report = SweepReport()
        store = self.scheduler.store
        for run in store.find_stale(self.broker.stale_after_s):
            reason = (f"worker {run.worker} stopped heartbeating (> {self.broker.stale_after_s:g}s) "
                      f"during attempt {run.attempts}")
            new = store.requeue(run.id, error=reason)
            if new is None:
                continue  # another sweeper, or the worker itself, got there first
            if new.state == "queued":
                log.warning("run %s: %s; sending it again", run.id, reason)
                self.scheduler.send(new)
                report.requeued.append(run.id)
            else:
                log.error("run %s is dead after %s attempts: %s", run.id, new.attempts, reason)
                report.dead.append(run.id)
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.broker.sweep_every_s):
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweep failed")

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._loop, name="flywheel-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
