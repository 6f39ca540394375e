"""The world model's own autoencoder (kl2d) trained on store frames before the denoiser."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.errors import FlywheelError
from flywheel.training.vae import frame_pool, train_vae
from policies.world_model import WorldModel, WorldModelConfig

torch.set_num_threads(1)
S = 16


def kl_model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(image_size=S, num_frames=3, vae="kl2d", kl_block_out_channels=(8, 8),
                                       patch_size=(1, 2, 2), num_layers=1, ffn_dim=64, text_layers=1,
                                       text_vocab_size=256, max_text_tokens=12, success_hidden=16))


def frames(n: int = 64) -> np.ndarray:
    """Smooth synthetic frames: a bright square on a gradient, at random places."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:S, 0:S]
    out = np.empty((n, S, S, 3), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, S - 5, size=2)
        img = np.stack([xx * 8, yy * 8, np.full_like(xx, 60)], -1).astype(np.float32)
        img[y:y + 5, x:x + 5] = 230
        out[i] = img
    return out


def test_autoencoder_learns_to_reconstruct_and_is_saved_frozen_and_scaled(tmp_path):
    m = kl_model()
    data = frames()
    logs = train_vae(m.vae, data, steps=150, lr=3e-3, batch_size=16)
    assert logs["vae_rec_last"] < logs["vae_rec_first"] / 5
    assert not any(p.requires_grad for p in m.vae.parameters())
    x = torch.from_numpy(data[:16]).permute(0, 3, 1, 2).float().div(255)[:, None]
    z = m.vae.encode(x)
    assert 0.8 < float(z.std()) < 1.25  # scaled for the denoiser
    assert float(((m.vae.decode(z) - x) ** 2).mean()) < 0.01
    m.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    assert torch.equal(loaded.vae.latent_scale, m.vae.latent_scale)
    assert torch.equal(loaded.vae.encode(x), z)


def test_bad_autoencoder_inputs_are_refused():
    with pytest.raises(FlywheelError, match="no frames"):
        frame_pool([])
    with pytest.raises(FlywheelError, match="disagree"):
        frame_pool([np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 16, 16, 3), np.uint8)])
    with pytest.raises(FlywheelError, match="not a trainable autoencoder"):
        train_vae(WorldModel(WorldModelConfig(image_size=S, num_frames=3, patch_size=(1, 4, 4))).vae,
                  frames(4), steps=1, lr=1e-3)
    with pytest.raises(FlywheelError, match="uint8"):
        train_vae(kl_model().vae, frames(4).astype(np.float32), steps=1, lr=1e-3)
