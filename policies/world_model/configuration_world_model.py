"""Configuration of the video diffusion world model."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorldModelConfig:
    """A Wan-family video diffusion transformer with flow matching. `tiny` trains on 2 CPU cores."""

    size: str = "tiny"
    pretrained_path: str | None = None  # local directory only; nothing is downloaded
    vae: str = "identity"  # identity | kl2d | wan
    text_encoder: str = "small"  # small (trained with the model) | pretrained (local path)
    text_encoder_path: str | None = None
    image_size: int = 64
    num_frames: int = 9  # frames per clip including the conditioning start frame
    patch_size: tuple[int, int, int] = (1, 4, 4)
    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    ffn_dim: int = 256
    text_dim: int = 64
    max_text_tokens: int = 32
    action_dim: int = 16
    action_conditioning: bool = True
    success_head: bool = True

    def __post_init__(self) -> None:
        if self.vae not in ("identity", "kl2d", "wan"):
            raise ValueError(f"world_model.vae must be identity, kl2d or wan, got {self.vae!r}")
        if self.num_frames < 2:
            raise ValueError(f"world_model.num_frames must be >= 2, got {self.num_frames}")
