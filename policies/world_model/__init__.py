"""World model: a Wan video diffusion transformer with flow matching (imagine and evaluation modes).

`WorldModel` is imported lazily so that reading the config (the CLI, Hydra) does not load torch."""
from __future__ import annotations

import importlib

from policies.world_model.configuration_world_model import WorldModelConfig

__all__ = ["WorldModel", "WorldModelConfig"]


def __getattr__(name: str):
    if name == "WorldModel":
        return importlib.import_module("policies.world_model.modeling_world_model").WorldModel
    raise AttributeError(f"module 'policies.world_model' has no attribute {name!r}")
