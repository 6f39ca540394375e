"""envs: the MuJoCo humanoid tabletop env, tasks and splits, scripted expert and play data, backends.

Importing `envs` stays light (no MuJoCo, no gymnasium). The gym id `flywheel/HumanoidTabletop-v0` is
registered by `register_envs()`, which runs here when gymnasium is already imported and whenever
`envs.tabletop` is imported.
"""
from __future__ import annotations

import sys

ENV_ID = "flywheel/HumanoidTabletop-v0"


def register_envs() -> None:
    """Register `flywheel/HumanoidTabletop-v0` with gymnasium (idempotent)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="envs.tabletop:HumanoidTabletopEnv")


if "gymnasium" in sys.modules:
    register_envs()
