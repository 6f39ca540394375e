"""What the `flywheel.retrain`, `flywheel.evaluate` and `flywheel.promote` Celery tasks run.

Each hook is `fn(cfg, store, payload, run_id, should_stop) -> JSON-able dict`; `payload["params"]`
carries the arguments (see docs/tasks_contract.md). Hooks re-read everything from the store.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel.errors import FlywheelError
from flywheel.registry import ModelRegistry


def _registry(cfg: Any, store: Any) -> ModelRegistry:
    return ModelRegistry(store, Path(cfg.data_path))


def retrain(cfg: Any, store: Any, payload: dict[str, Any], run_id: int | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Train a world-model and/or IDM version. params: kind (world_model | idm | both), phase (a unique
    name; a phase already trained returns its version), parent (None, an alias or a version number)."""
    from flywheel.training.pipeline import StoreTrainer

    params = payload.get("params", {})
    kind, phase = params.get("kind", "both"), params.get("phase")
    if kind not in ("world_model", "idm", "both") or not phase:
        raise FlywheelError("retrain needs params.kind in world_model|idm|both and a params.phase name")
    reg = _registry(cfg, store)
    trainer = StoreTrainer(cfg, store, reg, progress=False, say=lambda _m: None)
    out = {}
    for k in (("world_model", "idm") if kind == "both" else (kind,)):
        parent = reg.resolve(k, params["parent"]) if params.get("parent") is not None else None
        train = trainer.train_world_model if k == "world_model" else trainer.train_idm
        m = train(parent=parent, phase=phase)
        out[k] = {"version": m.version, "id": m.id}
    return out


def evaluate(cfg: Any, store: Any, payload: dict[str, Any], run_id: int | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Held-out metrics of a model version, recorded as evaluations: the world model's evaluation-mode
    PSNR/SSIM vs copying the last frame and its success-head AUROC; the IDM's DTW/MSE vs holding still.
    params: kind, version, n_episodes (held-out expert/rollout episodes to use, default 8)."""
    from flywheel.data import ClipDataset, EpisodeFilter, is_held_out, load_episodes

    params = payload.get("params", {})
    kind, version = params.get("kind"), params.get("version")
    if kind not in ("world_model", "idm") or version is None:
        raise FlywheelError("evaluate needs params.kind (world_model | idm) and params.version")
    n = int(params.get("n_episodes", 8))
    row = store.get_model(kind, int(version))
    eps = [e for e in load_episodes(store, EpisodeFilter(limit=None)) if is_held_out(e.id) and len(e.actions) >= 2][:n]
    if not eps:
        raise FlywheelError("no held-out episodes in the store to evaluate on")
    model = load_checked(kind, _registry(cfg, store).get(kind, int(version)).path)
    if kind == "world_model":
        from flywheel.evaluation.video_metrics import evaluate_world_model

        clips = ClipDataset(eps, num_frames=model.cfg.num_frames, stride=10**6)
        metrics = evaluate_world_model(model, [clips[i] for i in range(len(clips))])
    else:
        from flywheel.evaluation.dtw import evaluate_idm

        metrics = evaluate_idm(model, [e.as_dict() for e in eps])
    recorded: dict[str, float | None] = {}
    for name, value in metrics.items():
        if isinstance(value, (int, float)):
            finite = math.isfinite(float(value))
            if finite:
                store.record_evaluation("held_out", row.id, name, float(value), len(eps))
            recorded[name] = float(value) if finite else None  # JSON (and PostgreSQL) have no NaN
    return {"kind": kind, "version": int(version), "metrics": recorded}


def promote(cfg: Any, store: Any, payload: dict[str, Any], run_id: int | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Point an alias (default champion) at a version after checking it loads. params: kind, version,
    reason, alias. A corrupt checkpoint is refused and the alias stays where it was."""
    params = payload.get("params", {})
    kind, version = params.get("kind"), params.get("version")
    if kind not in ("world_model", "idm") or version is None:
        raise FlywheelError("promote needs params.kind (world_model | idm) and params.version")
    reg = _registry(cfg, store)
    m = reg.get(kind, int(version))  # sha256-verified materialisation
    load_checked(kind, m.path)
    reg.promote(kind, m.id, params.get("reason", "promoted"), alias=params.get("alias", "champion"))
    return {"kind": kind, "version": m.version, "alias": params.get("alias", "champion")}


def load_checked(kind: str, path: Path) -> Any:
    """Load a checkpoint directory (manifest and sha256 checked by the loader)."""
    if kind == "world_model":
        from policies.world_model import WorldModel

        return WorldModel.from_pretrained(path)
    from policies.idm import InverseDynamicsModel

    return InverseDynamicsModel.from_pretrained(path)


def retrain_due(cfg: Any, store: Any) -> str | None:
    """The phase name of a retrain that is due (K = flywheel.retrain_every new rollouts since the data
    snapshot of the newest world model), or None. Used by the Celery beat schedule of long-running
    deployments; the phase name makes the resulting retrain idempotent."""
    models = store.list_models("world_model")
    since = max((m.data_snapshot or {}).get("max_episode_id", 0) for m in models) if models else 0
    newest = store.episodes(source="rollout", limit=1)
    if not newest:
        return None
    new = [e for e in store.episodes(source="rollout", limit=cfg.flywheel.retrain_every) if e.id > since]
    return f"beat-{newest[0].id}" if len(new) >= cfg.flywheel.retrain_every else None
