"""Training the world model's own small autoencoder (`world_model.vae=kl2d`) on store frames.

The latent diffusion recipe: the autoencoder is trained first, on single frames with its reconstruction +
KL loss (`KL2DVAE.loss`), then frozen while the denoiser learns on its latents. The bootstrap does this
before the first world-model stage when the config names no pretrained autoencoder (`world_model.vae_path`);
fine-tunes keep the champion's autoencoder, so its latent space never moves under a trained denoiser.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from flywheel.data import frames_to_video
from flywheel.errors import FlywheelError
from flywheel.training.common import autocast, progress_bar, resolve_device
from policies.world_model.modeling_vae import KL2DVAE


def frame_pool(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Every frame of the given episodes, uint8 `(N, H, W, 3)`: what the autoencoder learns from."""
    pool = [np.asarray(f) for f in frames if len(f)]
    if not pool:
        raise FlywheelError("no frames to train the autoencoder on: the store has no episodes with arrays")
    shapes = {p.shape[1:] for p in pool}
    if len(shapes) != 1:
        raise FlywheelError(f"episodes disagree on the frame shape {sorted(shapes)}; train on one image size")
    return np.concatenate(pool)


def train_vae(vae: KL2DVAE, frames: np.ndarray, steps: int, lr: float, batch_size: int = 32,
              seed: int = 0, device: str = "cpu", precision: str = "fp32", kl_weight: float = 1e-4,
              progress: bool = False) -> dict[str, float]:
    """Train `vae` on uint8 frames `(N, H, W, 3)` for `steps` AdamW steps, in place, and
    leave it frozen with its latents scaled to unit variance. Returns the first and last reconstruction
    MSE (in [-1, 1] units, averaged over the first / last tenth of the steps), the KL term, the latent
    scale and the throughput."""
    if not isinstance(vae, KL2DVAE):
        raise FlywheelError(f"{type(vae).__name__} is not a trainable autoencoder (world_model.vae=kl2d is)")
    if steps < 1 or not math.isfinite(lr) or lr <= 0:
        raise FlywheelError(f"autoencoder training needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FlywheelError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    dev = resolve_device(device)
    vae.to(dev).train()
    vae.ae.requires_grad_(True)
    params = [p for p in vae.ae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    recs, kls = [], []
    bar = progress_bar(steps, progress, "autoencoder")
    t0 = time.perf_counter()
    try:
        for step in range(steps):
            for g in opt.param_groups:  # short linear warm-up
                g["lr"] = lr * min(1.0, (step + 1) / max(1, min(50, steps // 10)))
            idx = rng.integers(len(frames), size=batch_size)
            x = frames_to_video(frames[idx]).to(dev)[:, None]  # (B, 1, 3, H, W): single frames
            with autocast(dev, precision):
                loss, logs = vae.loss(x, kl_weight=kl_weight)
            if not torch.isfinite(loss):
                raise FlywheelError(f"autoencoder loss is {loss.item()} at step {step}; lower train.vae_lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            recs.append(logs["vae_rec"])
            kls.append(logs["vae_kl"])
            bar.set_postfix(rec=f"{logs['vae_rec']:.4f}")
            bar.update()
    finally:
        bar.close()
        vae.ae.requires_grad_(False)
        vae.eval()
    wall = time.perf_counter() - t0
    sample = frames_to_video(frames[rng.integers(len(frames), size=min(len(frames), 256))])
    scale = vae.fit_latent_scale(sample.to(dev)[:, None])
    k = max(1, steps // 10)
    return {"vae_steps": steps, "vae_rec_first": float(np.mean(recs[:k])), "vae_rec_last": float(np.mean(recs[-k:])),
            "vae_kl_last": float(np.mean(kls[-k:])), "vae_latent_scale": scale,
            "vae_frames_per_s": steps * batch_size / max(wall, 1e-9)}
