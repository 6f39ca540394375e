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

    def _train(self, kind: str, parent: RegisteredModel | None, phase: str) -> RegisteredModel:
        spec = {"kind": "retrain", "params": {"kind": kind, "phase": phase,
                                              "parent": parent.version if parent else None}}
        (run_id,), = self.scheduler.enqueue_many([spec], key=f"train:{kind}:{phase}")
        (row,) = self.scheduler.wait([run_id], timeout=self.timeout_s)
        if row.state != "succeeded":
            raise FlywheelError(f"training {kind} ({phase}) {row.state}: {row.error}")
        return self.registry.get(kind, int(row.result[kind]["version"]))

    def train_world_model(self, parent: RegisteredModel | None, phase: str) -> RegisteredModel:
        return self._train("world_model", parent, phase)

    def train_idm(self, parent: RegisteredModel | None, phase: str) -> RegisteredModel:
        return self._train("idm", parent, phase)

    def evaluate(self, model: RegisteredModel, n_episodes: int = 8) -> dict[str, Any]:
        """Held-out metrics of a version through `flywheel.evaluate` on the `eval` queue (recorded as
        evaluations by the hook); returns them, or `{"error": ...}` when the evaluation failed."""
        spec = {"kind": "evaluate", "params": {"kind": model.kind, "version": model.version, "n_episodes": n_episodes}}
        (run_id,), = self.scheduler.enqueue_many([spec], key=f"evaluate:{model.kind}:{model.version}")
        (row,) = self.scheduler.wait([run_id], timeout=self.timeout_s)
        if row.state != "succeeded":
            return {"error": f"{row.state}: {row.error}"}
        return dict(row.result.get("metrics", {}))
