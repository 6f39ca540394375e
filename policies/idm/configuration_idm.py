"""Configuration of the inverse dynamics model."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IDMConfig:
    """Two frames `window` steps apart in, the `window` actions between them out."""

    size: str = "tiny"
    backbone: str = "small_cnn"  # small_cnn (from scratch) | depth_anything (local path)
    backbone_path: str | None = None
    image_size: int = 64
    window: int = 8  # W
    action_dim: int = 16
    proprio_dim: int = 32
    hidden_dim: int = 128
    head_layers: int = 3
    flow_steps: int = 4  # Euler steps at sampling time
    noise_samples: int = 8  # K draws averaged at extraction

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"idm.window must be >= 1, got {self.window}")
        if self.noise_samples < 1 or self.flow_steps < 1:
            raise ValueError("idm.noise_samples and idm.flow_steps must be >= 1")
