"""Start and stop real worker processes for a config, with the sweeper (`flywheel worker`, `flywheel
run` and the tests use it).

    with WorkerPool(cfg, n=2, queues=["sim"]) as pool:
        run_ids = pool.scheduler.enqueue(spec)
        pool.scheduler.wait(run_ids, timeout=120)

Each worker is `python -m celery -A workers worker` (prefork, so the time limits hold) in its own
process group, with the resolved config in its environment. Stopping sends SIGTERM (a warm shutdown:
the running task finishes, unacked ones go back to the queue), then SIGKILL after `grace_s`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Self

from workers.app import READY_FILE_ENV, worker_queues
from workers.errors import WorkerError

log = logging.getLogger("workers.pool")


class WorkerPool:
    """N worker processes consuming `queues` (logical names; default `broker.queues`), plus a sweeper."""

    def __init__(
        self, cfg: Any, n: int = 1, queues: list[str] | None = None, *, sweeper: bool = True,
        concurrency: int | None = None, loglevel: str = "WARNING", grace_s: float = 20.0, scheduler: Any = None,
    ) -> None:
        from workers.client import Scheduler
        from workers.runtime import as_config

        if n < 1:
            raise WorkerError(f"a worker pool needs n >= 1 processes, got {n}")
        self.cfg = as_config(cfg)
        self.n = n
        self.queues = worker_queues(self.cfg, queues)
        self.concurrency = concurrency or self.cfg.broker.concurrency
        self.loglevel = loglevel
        self.grace_s = grace_s
        self.scheduler = scheduler or Scheduler(self.cfg)
        self.sweeper = None
        self._with_sweeper = sweeper
        self.procs: list[subprocess.Popen] = []
        self._ready: list[Path] = []
        self.log_dir = self.cfg.data_path / "logs"
        self._tag = uuid.uuid4().hex[:8]

    def _command(self, i: int) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "workers", "worker",
            "-Q", ",".join(self.queues), "-c", str(self.concurrency), "--pool", "prefork",
            "-n", f"flywheel-{self._tag}-{i}@%h", "-l", self.loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]

    def start_worker(self, i: int) -> subprocess.Popen:
        """Start worker process `i` (also used to replace a killed one)."""
        from workers.runtime import worker_env

        self.log_dir.mkdir(parents=True, exist_ok=True)
        ready = self.log_dir / f"worker-{self._tag}-{i}.ready"
        ready.unlink(missing_ok=True)
        env = worker_env(self.cfg)
        env[READY_FILE_ENV] = str(ready)
        with open(self.log_dir / f"worker-{self._tag}-{i}.log", "ab") as logf:  # the child keeps its own handle
            proc = subprocess.Popen(self._command(i), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent))
        if i < len(self.procs):
            self.procs[i], self._ready[i] = proc, ready
        else:
            self.procs.append(proc)
            self._ready.append(ready)
        return proc

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every worker consumes its queues; WorkerError if one exits or times out."""
        deadline = time.monotonic() + timeout
        for i, (proc, ready) in enumerate(zip(self.procs, self._ready)):
            while not ready.is_file():
                if proc.poll() is not None:
                    raise WorkerError(f"worker {i} exited with {proc.returncode}; see {self.log_dir}")
                if time.monotonic() > deadline:
                    raise WorkerError(f"worker {i} not ready after {timeout}s; see {self.log_dir}")
                time.sleep(0.1)

    def start(self, wait: bool = True) -> WorkerPool:
        from workers.broker import ensure_embedded_broker
        from workers.sweeper import Sweeper

        ensure_embedded_broker(self.cfg.broker, self.cfg.data_path)
        for i in range(self.n):
            self.start_worker(i)
        if wait:
            self.wait_ready()
        if self._with_sweeper:
            self.sweeper = Sweeper(self.scheduler).start()
        return self

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to worker `i`'s whole process group (the main process and its pool children)."""
        try:
            os.killpg(self.procs[i].pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.procs[i].wait(timeout=10)

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.kill(i, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for i, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in %ss: killing it", i, self.grace_s)
                self.kill(i, signal.SIGKILL)
            # the pool children of a stopped worker share its process group: make sure none is left
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
