"""Pluggable video autoencoders: identity (pixels), a small 2D KL autoencoder, or the Wan VAE.

All take and give videos `(B, T, 3, H, W)` float in [0, 1] and latents `(B, C, t, h, w)` roughly
zero-mean unit-variance, the layout `WanTransformer3DModel` expects.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from policies.errors import PolicyError
from policies.world_model.configuration_world_model import WorldModelConfig


class VideoVAE(nn.Module):
    """Base: `encode(video) -> latents`, `decode(latents) -> video`.

    `external` modules are loaded from a local path and frozen; they are not stored in world-model
    checkpoints (the config keeps their path). `trainable` ones are optimised with the world model.
    """

    latent_channels: int = 3
    spatial_factor: int = 1
    temporal_factor: int = 1
    external: bool = False
    trainable: bool = False

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W) -> (B, C, t, h, w)
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # (B, C, t, h, w) -> (B, T, 3, H, W)
        raise NotImplementedError


class IdentityVAE(VideoVAE):
    """Pixels as latents, mapped to [-1, 1]. For the smallest configs."""

    latent_channels = 3

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return (video * 2.0 - 1.0).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.permute(0, 2, 1, 3, 4) + 1.0) / 2.0).clamp(0.0, 1.0)


class KL2DVAE(VideoVAE):
    """A small `diffusers.AutoencoderKL` applied frame by frame; trained on store frames with `loss`.

    The world model keeps it frozen (train it first with `loss`, then the denoiser on its latents);
    its weights are part of the world-model checkpoint.
    """

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        if cfg.vae_path:
            self.ae = AutoencoderKL.from_pretrained(_local_dir(cfg.vae_path, "vae"), local_files_only=True)
        else:
            n = len(cfg.kl_block_out_channels)
            self.ae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n,
                block_out_channels=cfg.kl_block_out_channels,
                layers_per_block=1,
                latent_channels=cfg.kl_latent_channels,
                norm_num_groups=min(32, *cfg.kl_block_out_channels),
                sample_size=cfg.image_size,
                scaling_factor=1.0,
                mid_block_add_attention=False,
            )
        self.latent_channels = self.ae.config.latent_channels
        self.spatial_factor = 2 ** (len(self.ae.config.block_out_channels) - 1)
        self.ae.requires_grad_(False)
        # latents are multiplied by this so the denoiser sees ~unit variance; set from data after training
        # (`fit_latent_scale`) and saved with the weights, unlike the autoencoder's own config
        self.register_buffer("latent_scale", torch.tensor(float(self.ae.config.scaling_factor)))

    @torch.no_grad()
    def fit_latent_scale(self, video: torch.Tensor) -> float:
        """Set `latent_scale` to 1 / std of the latents of `video (B, T, 3, H, W)`; returns it."""
        self.latent_scale.fill_(1.0)
        std = float(self.encode(video).std())
        if not std > 0:
            raise PolicyError(f"the autoencoder's latents have std {std}: it cannot be scaled")
        self.latent_scale.fill_(1.0 / std)
        return 1.0 / std

    def _frames(self, video: torch.Tensor) -> torch.Tensor:
        return video.flatten(0, 1) * 2.0 - 1.0  # (B*T, 3, H, W) in [-1, 1]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        z = self.ae.encode(self._frames(video)).latent_dist.mode() * self.latent_scale
        return z.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4)  # (B, C, T, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, _, t = latents.shape[:3]
        z = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / self.latent_scale
        x = self.ae.decode(z).sample.unflatten(0, (b, t))
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def loss(self, video: torch.Tensor, kl_weight: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction + KL loss on frames `(B, T, 3, H, W)`, for training the autoencoder itself."""
        x = self._frames(video)
        dist = self.ae.encode(x).latent_dist
        recon = self.ae.decode(dist.sample()).sample
        rec = (recon - x).pow(2).mean()
        kl = dist.kl().mean() / x[0].numel()
        loss = rec + kl_weight * kl
        return loss, {"vae_rec": rec.item(), "vae_kl": kl.item()}


class WanVAE(VideoVAE):
    """`diffusers.AutoencoderKLWan` from a local directory (frozen, 4x temporal, 8x spatial)."""

    external = True

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        if not cfg.vae_path:
            raise PolicyError("world_model.vae=wan needs world_model.vae_path (a local AutoencoderKLWan dir)")
        self.ae = AutoencoderKLWan.from_pretrained(_local_dir(cfg.vae_path, "vae"), local_files_only=True)
        self.ae.requires_grad_(False).eval()
        c = self.ae.config
        self.latent_channels = c.z_dim
        self.temporal_factor = 2 ** sum(bool(d) for d in c.temperal_downsample)
        self.spatial_factor = 2 ** (len(c.dim_mult) - 1)
        self.register_buffer("mean", torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        x = video.permute(0, 2, 1, 3, 4) * 2.0 - 1.0  # (B, 3, T, H, W)
        z = self.ae.encode(x.to(self.ae.dtype)).latent_dist.mode().float()
        return (z - self.mean) / self.std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents * self.std + self.mean).to(self.ae.dtype)
        x = self.ae.decode(z).sample.float().permute(0, 2, 1, 3, 4)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _local_dir(path: str, subfolder: str) -> str:
    """A local model dir, or its `subfolder` when the path is a whole pipeline. Never a hub name."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise PolicyError(f"model path {path!r} is not a local directory (nothing is downloaded from a hub)")
    return str(p / subfolder) if (p / subfolder / "config.json").is_file() else str(p)


def make_vae(cfg: WorldModelConfig) -> VideoVAE:
    """Build the VAE named by `cfg.vae`."""
    if cfg.vae == "identity":
        return IdentityVAE()
    if cfg.vae == "kl2d":
        return KL2DVAE(cfg)
    return WanVAE(cfg)
