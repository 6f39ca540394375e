"""The flywheel's side of dispatch: run episode specs and training through the workers and wait.

`SchedulerEpisodeRunner` turns TaskSpec dicts into ledger runs (idempotent by key, so a restarted loop
re-attaches to the runs it already enqueued) and returns each run's result. `DispatchTrainer` sends
`flywheel.retrain` to the `train` queue and returns the registered version. Both take any object with
the scheduler's `enqueue_many` / `wait` (the Celery scheduler, or the in-process one in tests).
"""
from __future__ import annotations

from typing import Any

from flywheel.errors import FlywheelError
from flywheel.registry import ModelRegistry, RegisteredModel


class SchedulerEpisodeRunner:
    """`run_episodes(specs, key) -> [result dict]`: `episode_id`, `success` (False for a dead run), `state`."""

    def __init__(self, scheduler: Any, timeout_s: float | None = None):
        self.scheduler, self.timeout_s = scheduler, timeout_s

    def __call__(self, specs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        if not specs:
            return []
        groups = self.scheduler.enqueue_many(specs, key=key)
        ids = [g[0] for g in groups]  # one attempt per spec
        rows = self.scheduler.wait(ids, timeout=self.timeout_s)
        out = []
        for row in rows:
            res = dict(row.result or {})
            res.setdefault("success", False)
            res["state"], res["run_id"], res["error"] = row.state, row.id, row.error
            out.append(res)
        return out


class DispatchTrainer:
    """Trains through the `flywheel.retrain` task on the `train` queue (phase names make it idempotent)."""

    def __init__(self, scheduler: Any, registry: ModelRegistry, timeout_s: float | None = None):
        self.scheduler, self.registry, self.timeout_s = scheduler, registry, timeout_s

    def train_pair(self, parents: tuple[RegisteredModel | None, RegisteredModel | None],
                   phase: str) -> tuple[RegisteredModel, RegisteredModel]:
        """Train the world model and the IDM at once (two `train` tasks, one per worker process)."""
        kinds = ("world_model", "idm")
        specs = [{"kind": "retrain", "params": {"kind": k, "phase": phase, "parent": p.version if p else None}}
                 for k, p in zip(kinds, parents)]
        # an earlier invocation's run that failed (a crash, a bug since fixed) trains again; the phase name keeps
        # a model that did register from training twice
        groups = self.scheduler.enqueue_many(specs, key=f"train:{phase}", retry_failed=True)
        rows = self.scheduler.wait([g[0] for g in groups], timeout=self.timeout_s)
        out = []
        for kind, row in zip(kinds, rows):
            if row.state != "succeeded":
                raise FlywheelError(f"training {kind} ({phase}) {row.state}: {row.error}")
            out.append(self.registry.get(kind, int(row.result[kind]["version"])))
        return out[0], out[1]

    def evaluate_pair(self, models: tuple[RegisteredModel, RegisteredModel], n_episodes: int = 8) -> dict[str, Any]:
        """Held-out metrics of both versions at once (see `evaluate`)."""
        specs = [{"kind": "evaluate", "params": {"kind": m.kind, "version": m.version, "n_episodes": n_episodes}}
                 for m in models]
        groups = self.scheduler.enqueue_many(specs, key=f"evaluate:{models[0].version}:{models[1].version}")
        rows = self.scheduler.wait([g[0] for g in groups], timeout=self.timeout_s)
        return {m.kind: (dict(r.result.get("metrics", {})) if r.state == "succeeded" else {"error": f"{r.state}: {r.error}"})
                for m, r in zip(models, rows)}
