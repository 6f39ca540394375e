"""Inverse dynamics model: imagined video -> joint-target actions (config, model, processing).

Model names are imported lazily so that reading the config (the CLI, Hydra) does not load torch."""
from __future__ import annotations

import importlib

from policies.idm.configuration_idm import IDMConfig

_LAZY = {
    "Extraction": "policies.idm.modeling_idm",
    "InverseDynamicsModel": "policies.idm.modeling_idm",
    "average_windows": "policies.idm.processor_idm",
}
__all__ = ["Extraction", "IDMConfig", "InverseDynamicsModel", "average_windows"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'policies.idm' has no attribute {name!r}")
