"""Configuration of the inverse dynamics model."""
from __future__ import annotations

from dataclasses import dataclass

BACKBONES = ("small_cnn", "depth_anything")


@dataclass
class IDMConfig:
    """Two frames `window` steps apart in, the `window` actions between them out.

    `small_cnn` is trained from scratch (tiny); `depth_anything` loads a transformers Depth Anything
    checkpoint from the local directory `backbone_path` (never downloaded).
    """

    size: str = "tiny"
    backbone: str = "small_cnn"  # small_cnn (from scratch) | depth_anything (local path)
    backbone_path: str | None = None
    freeze_backbone: bool = False  # keep pretrained backbone weights fixed while training
    image_size: int = 64  # frames are resized to (image_size, image_size) before the backbone
    cnn_channels: int = 32  # width of the first small_cnn stage (doubled per stage)
    feature_dim: int = 128  # per-frame feature size after the backbone projection
    window: int = 8  # W
    action_dim: int = 16
    proprio_dim: int = 32
    hidden_dim: int = 128
    head_layers: int = 3  # transformer blocks of the flow head (one token per action step)
    head_heads: int = 4
    flow_steps: int = 4  # Euler steps at sampling time
    noise_samples: int = 8  # K draws averaged at extraction
    proprio_passes: int = 2  # extraction passes; later passes re-estimate the proprio of later windows
    control_dt: float = 0.1  # seconds between actions (1 / env.control_hz), for the qvel estimate
    max_batch: int = 4096  # largest head batch (windows x K) run in one forward pass

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"idm.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.window < 1:
            raise ValueError(f"idm.window must be >= 1, got {self.window}")
        if self.noise_samples < 1 or self.flow_steps < 1:
            raise ValueError("idm.noise_samples and idm.flow_steps must be >= 1")
        if self.proprio_passes < 1:
            raise ValueError(f"idm.proprio_passes must be >= 1, got {self.proprio_passes}")
        if self.control_dt <= 0:
            raise ValueError(f"idm.control_dt must be > 0, got {self.control_dt}")
        if self.hidden_dim % self.head_heads:
            raise ValueError(
                f"idm.hidden_dim ({self.hidden_dim}) must be a multiple of idm.head_heads ({self.head_heads})"
            )
        if self.image_size < 16:
            raise ValueError(f"idm.image_size must be >= 16, got {self.image_size}")
