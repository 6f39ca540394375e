"""Training recipes: the world model (`world_model.train_world_model`) and shared helpers (`common`).

Names are imported lazily so that importing `flywheel` stays fast (no torch at CLI start-up).
"""
from __future__ import annotations

_EXPORTS = {
    "Stage": "flywheel.training.world_model",
    "TrainResult": "flywheel.training.world_model",
    "collate_clips": "flywheel.training.world_model",
    "train_world_model": "flywheel.training.world_model",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flywheel.training' has no attribute {name!r}")
