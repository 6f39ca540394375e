"""Configuration of the humanoid tabletop env and of the backends that run it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class EnvConfig:
    """The MuJoCo humanoid tabletop environment."""

    image_size: int = 64  # egocentric RGB is (image_size, image_size, 3)
    control_hz: float = 10.0  # policy/action rate
    physics_dt: float = 0.004  # MuJoCo timestep; n_substeps = 1 / (control_hz * physics_dt)
    max_steps: int = 60  # episode step limit at control rate
    action_space: str = "joint"  # "joint" (native joint-position targets) or "ee_delta" (IK)
    randomize: bool = True  # seeded domain randomisation
    render: bool = True

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 720:
            raise ValueError(f"env.image_size must be in [16, 720], got {self.image_size}")
        for name in ("control_hz", "physics_dt"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"env.{name} must be a finite number > 0, got {value}")
        if self.action_space not in ("joint", "ee_delta"):
            raise ValueError(f"env.action_space must be 'joint' or 'ee_delta', got {self.action_space!r}")


@dataclass
class SafetyConfig:
    """The safety filter between every policy and every robot."""

    mode: str = "reject"  # "reject" or "clamp" out-of-limit commands (NaN/inf/shape are always rejected)
    max_joint_velocity: float = 2.5  # rad/s between consecutive targets
    workspace_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("reject", "clamp"):
            raise ValueError(f"backend.safety.mode must be 'reject' or 'clamp', got {self.mode!r}")
        if not (math.isfinite(self.max_joint_velocity) and self.max_joint_velocity > 0):
            raise ValueError(f"backend.safety.max_joint_velocity must be a finite number > 0 (rad/s), "
                             f"got {self.max_joint_velocity}")
        if not (math.isfinite(self.workspace_margin) and self.workspace_margin >= 0):
            raise ValueError(f"backend.safety.workspace_margin must be a finite number >= 0, "
                             f"got {self.workspace_margin}")


@dataclass
class BackendConfig:
    """Which backend runs episodes: `sim` (in-process MuJoCo) or `neo:<robot_id>` (bridge client)."""

    name: str = "sim"
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # shared secret for the NEO bridge; env FLYWHEEL_NEO_TOKEN if None
    timeout_s: float = 5.0
    heartbeat_s: float = 0.2
    watchdog_s: float = 0.5
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        if not (self.name == "sim" or self.name.startswith("neo:")):
            raise ValueError(f"backend.name must be 'sim' or 'neo:<robot_id>', got {self.name!r}")
