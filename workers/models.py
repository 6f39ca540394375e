"""Model versions a worker runs with, loaded once per process from the registry and reused.

A task names versions (`{"world_model": 3, "idm": 2}`, pinned at enqueue); a worker that does not have
one yet materialises it from the artifact store (sha256-verified) and loads it. Corrupt checkpoints are
refused by the loader (`CheckpointError`), and the task fails with that message.
"""
from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_models: dict[tuple[str, str, int], tuple[Any, int]] = {}  # (store, kind, version) -> (model, version id)


def load_model(cfg: Any, store: Any, kind: str, version: int) -> tuple[Any, int]:
    """The loaded model of `kind` at `version` and its model-version id (cached per process)."""
    key = (f"{cfg.db.url or cfg.data_path}", kind, int(version))  # versions are per store
    with _lock:
        if key not in _models:
            from flywheel.registry import ModelRegistry

            reg = ModelRegistry(store, cfg.data_path).get(kind, int(version))
            if kind == "world_model":
                from policies.world_model import WorldModel

                model = WorldModel.from_pretrained(reg.path)
            elif kind == "idm":
                from policies.idm import InverseDynamicsModel

                model = InverseDynamicsModel.from_pretrained(reg.path)
            else:
                raise ValueError(f"workers cannot load models of kind {kind!r}")
            model.eval()
            if len(_models) >= 8:  # keep memory bounded: drop the oldest
                _models.pop(next(iter(_models)))
            _models[key] = (model, reg.id)
        return _models[key]
