"""The world model: a Wan video diffusion transformer trained with flow matching, conditioned on the
start frame(s), a caption and optionally an action chunk, with a success head on the final frame.

Conditioning: extra input channels of the denoiser (Wan I2V style), so every token sees the start
frame at its own location,
    [x_t (C) | start-frame latent broadcast over time (C) | mask (1)],
where the mask marks the conditioning latent frames (kept clean, not trained on); and a per-frame
action vector [actions (r*A) | actions-given (1)] embedded and added to every token of its frame by the
patch embedding: latent frame f gets the r actions that lead into it (r = VAE temporal factor). Actions are dropped at random in
training so one model serves imagine mode (text + frame) and evaluation mode (+ actions); captions
are dropped to the empty caption for classifier-free guidance.

With `imagine_joints` the latent has `action_dim` more channels after the video's: each joint's standardised
position, constant over its frame (the start frame's from the measured joints), diffused with the video;
sampling reads them back as each frame's mean (`imagine_joints`).

Flow matching: x_t = (1 - t) x0 + t noise, target velocity noise - x0, timestep 1000 t; sampling
with `FlowMatchEulerDiscreteScheduler`. With `residual` (tiny default) x0 is the latent video minus
the held start-frame latent, so a static scene is exactly zero and the model only learns the change.
With `prediction="sample"` (tiny) the transformer outputs x0, trained with an MSE on x0, and the sampler
uses the velocity (x_t - x0) / t: a narrow model only has to reproduce clean data, not noise.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from torch import nn

from policies.errors import CheckpointError, PolicyError
from policies.world_model.checkpoint import load_checkpoint, save_checkpoint
from policies.world_model.configuration_world_model import WorldModelConfig
from policies.world_model.modeling_text_encoder import make_text_encoder
from policies.world_model.modeling_vae import _local_dir, make_vae

if TYPE_CHECKING:
    import numpy as np


SIGMA_MIN = 0.05  # sample prediction: smallest noise level the velocity divides by


class SuccessHead(nn.Module):
    """P(task done) from the final latent frame `(B, C, h, w)` and the pooled caption `(B, D)`."""

    def __init__(self, latent_channels: int, text_dim: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(latent_channels, hidden // 2, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(hidden // 2, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.mlp = nn.Sequential(nn.Linear(hidden + text_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, latent: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.conv(latent), text], dim=-1)).squeeze(-1)  # (B,) logits


class PatchEmbedWithActions(nn.Module):
    """Wan's patch Conv3d on the latent channels, plus an embedding (linear or MLP) of the per-frame
    action vectors `frame_actions (B, t, C_a)` added to every token of its frame, plus (optionally) a
    learned spatial position embedding per token. `WorldModel._denoise` sets `frame_actions` around each
    transformer call: the actions are constant over space, so they are not broadcast into pixel channels.

    Wan's tokens carry their position only through RoPE inside attention, so a token's MLP cannot
    compute "is the arm over me for these actions": the position embedding gives it that. With
    `action_map`, every token also adds its own linear readout of the action MLP's hidden features, so that
    question is answered at the input rather than left to the transformer (docs/BENCHMARKS.md, session 10).
    The action embedding and the map are zero-initialised, and the position embedding too when loading
    pretrained weights, so a pretrained backbone is unchanged at step 0."""

    frame_actions: torch.Tensor | None = None  # (B, t, C_a), set by WorldModel._denoise around each call

    def __init__(self, conv: nn.Conv3d, action_channels: int, grid: tuple[int, int] | None = None,
                 zero_init: bool = True, action_hidden: int = 0, action_map: bool = False,
                 action_layers: int = 1) -> None:
        super().__init__()
        self.conv = conv
        self.action_channels = action_channels
        self.action: nn.Module | None = None
        self.action_map: nn.Parameter | None = None  # (WorldModelConfig checks what it needs)
        if action_channels:
            d = conv.out_channels
            last = nn.Linear(action_hidden or action_channels, d)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            # a linear embedding, or an MLP: the joint targets -> "where the arm is" map is far from linear
            self.action = last
            if action_hidden:
                widths = [action_channels] + [action_hidden] * action_layers
                hidden = [m for a, b in itertools.pairwise(widths) for m in (nn.Linear(a, b), nn.SiLU())]
                self.action = nn.Sequential(*hidden, last)
        self.pos = None
        if grid is not None:
            self.pos = nn.Parameter(torch.zeros(conv.out_channels, 1, *grid))
            if not zero_init:
                nn.init.normal_(self.pos, std=0.02)
        if action_map:  # (tokens, D, hidden): every token's own linear readout of the action features
            self.action_map = nn.Parameter(torch.zeros(grid[0] * grid[1], conv.out_channels, action_hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, t, H, W) -> (B, D, t, h, w)
        h = self.conv(x)
        if self.action is not None:
            fa = self.frame_actions
            if fa is None or fa.shape[:2] != (h.shape[0], h.shape[2]):
                raise PolicyError(f"the patch embedding needs per-frame actions {(h.shape[0], h.shape[2])}, "
                                  f"got {None if fa is None else tuple(fa.shape)}")
            fa = fa.to(self.conv.weight.dtype)
            if self.action_map is None:
                a = self.action(fa).to(h.dtype)  # (B, t, D)
                h = h + a.transpose(1, 2)[..., None, None]
            else:
                hid = self.action[:-1](fa)  # (B, t, hidden)
                # the same on every token of a frame, + a different one per token: one GEMM against the map
                # as stored (an einsum copied the 2 M-entry map into a transposed layout on every call)
                p, d, k = self.action_map.shape
                per_token = F.linear(hid, self.action_map.reshape(p * d, k)).unflatten(-1, (p, d))
                a = self.action[-1](hid)[..., None, :] + per_token  # (B, t, tokens, D)
                h = h + a.permute(0, 3, 1, 2).reshape(h.shape).to(h.dtype)
        if self.pos is not None:
            h = h + self.pos.to(h.dtype)
        return h


class TimeEmbeddingWithCaption(nn.Module):
    """Wan's timestep embedding plus an MLP of the pooled caption (`caption_adaln`): the sum is what every
    block's adaptive norm and the output norm read. `WorldModel._denoise` sets `states`, the caption's token
    states `(B, L, D_text)` (padding zeroed), around each transformer call. `pool="mean"` takes their masked
    mean; `pool="attention"` a learned query's masked softmax over them, whose query starts at zero (uniform
    weights: the mean). The MLP's last layer starts at zero, so the model starts as one without it."""

    states: torch.Tensor | None = None  # (B, L, D_text), set by WorldModel._denoise around each call

    def __init__(self, time_embedder: nn.Module, text_dim: int, dim: int, pool: str = "mean") -> None:
        super().__init__()
        self.time = time_embedder
        self.query = nn.Parameter(torch.zeros(text_dim)) if pool == "attention" else None
        last = nn.Linear(dim, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.caption = nn.Sequential(nn.Linear(text_dim, dim), nn.SiLU(), last)

    def pool(self, states: torch.Tensor) -> torch.Tensor:
        if self.query is None:
            return pool_caption(states)
        mask = caption_mask(states)[..., 0]  # (B, L)
        scores = (states @ self.query.to(states.dtype)) / states.shape[-1] ** 0.5
        w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)  # empty caption: 0
        return (w.unsqueeze(-1) * states).sum(1)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        temb = self.time(timestep)
        if self.states is None or self.states.shape[0] not in (1, temb.shape[0]):
            raise PolicyError(f"the caption's adaptive norm needs the caption of each of the {temb.shape[0]} "
                              f"samples, got {None if self.states is None else tuple(self.states.shape)}")
        return temb + self.caption(self.pool(self.states).to(temb.dtype))


def caption_mask(hidden: torch.Tensor) -> torch.Tensor:
    """Which caption tokens are real `(B, L, D) -> (B, L, 1)`: the encoders zero their padded positions."""
    return hidden.abs().amax(-1, keepdim=True) > 0


def pool_caption(hidden: torch.Tensor) -> torch.Tensor:
    """Masked mean of caption states `(B, L, D) -> (B, D)`."""
    mask = caption_mask(hidden)
    return hidden.sum(1) / mask.sum(1).clamp(min=1)


class WorldModel(nn.Module):
    """Text- and frame-conditioned video diffusion world model (see the module docstring)."""

    def __init__(self, cfg: WorldModelConfig, transformer_config: dict | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = make_vae(cfg)
        if self.vae.spatial_factor != cfg.spatial_factor or self.vae.temporal_factor != cfg.temporal_factor:
            raise PolicyError(
                f"the VAE downsamples {self.vae.spatial_factor}x/{self.vae.temporal_factor}x but the config "
                f"expects {cfg.spatial_factor}x/{cfg.temporal_factor}x; fix world_model.kl_block_out_channels"
            )
        self.text_encoder = make_text_encoder(cfg)
        self.video_channels = self.vae.latent_channels
        self.joint_channels = cfg.action_dim if cfg.imagine_joints else 0
        c = self.video_channels + self.joint_channels  # the diffused latent: the video's channels, then the joints'
        self.action_channels = cfg.temporal_factor * cfg.action_dim + 1 if cfg.action_conditioning else 0
        # each goal's planes and its flag
        self.goal_channels = cfg.goal_count * (cfg.action_dim + 1) if cfg.goal_joints else 0
        in_channels = 2 * c + 1 + self.goal_channels  # + action channels, embedded by PatchEmbedWithActions
        if cfg.action_conditioning and cfg.patch_size[0] != 1:
            raise PolicyError(f"action conditioning needs a temporal patch of 1, got {cfg.patch_size}")
        if transformer_config is not None:  # rebuilding one of our own checkpoints
            self.transformer = WanTransformer3DModel.from_config(transformer_config)
        elif cfg.pretrained_path:
            self.transformer = _load_pretrained_transformer(cfg, in_channels, c)
        else:
            self.transformer = WanTransformer3DModel(
                patch_size=cfg.patch_size, num_attention_heads=cfg.num_attention_heads,
                attention_head_dim=cfg.attention_head_dim, in_channels=in_channels, out_channels=c,
                text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                rope_max_seq_len=256,
            )
            if cfg.prediction == "sample" and cfg.residual:  # start as "nothing changes" (= copy the start frame)
                nn.init.zeros_(self.transformer.proj_out.weight)
                nn.init.zeros_(self.transformer.proj_out.bias)
        if self.action_channels or cfg.pos_embed:
            grid = (cfg.latent_size // cfg.patch_size[1], cfg.latent_size // cfg.patch_size[2])
            self.transformer.patch_embedding = PatchEmbedWithActions(
                self.transformer.patch_embedding, self.action_channels, grid if cfg.pos_embed else None,
                zero_init=bool(cfg.pretrained_path) or transformer_config is not None,
                action_hidden=cfg.action_hidden, action_map=cfg.action_map, action_layers=cfg.action_layers,
            )
        if cfg.caption_adaln:
            ce = self.transformer.condition_embedder
            inner = self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
            ce.time_embedder = TimeEmbeddingWithCaption(ce.time_embedder, cfg.text_dim, inner, cfg.caption_pool)
        self.success_head = SuccessHead(self.video_channels, cfg.text_dim, cfg.success_hidden) if cfg.success_head else None
        self.action_head = None
        self._tapped: torch.Tensor | None = None
        self._tap_now = False
        if cfg.imagine_action_loss:
            blocks = self.transformer.blocks
            if not -len(blocks) <= cfg.imagine_action_block < len(blocks):
                raise PolicyError(f"world_model.imagine_action_block={cfg.imagine_action_block}: the transformer "
                                  f"has {len(blocks)} blocks")
            inner = self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
            self.action_head = nn.Linear(inner, cfg.temporal_factor * cfg.action_dim)
            blocks[cfg.imagine_action_block].register_forward_hook(self._tap)
        if cfg.action_conditioning and cfg.normalize_actions:  # saved with the weights
            self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
            self.register_buffer("action_std", torch.ones(cfg.action_dim))
        if self.joint_channels:  # the joint channels' units: (q - mean) / std per joint, saved with the weights
            self.register_buffer("joint_mean", torch.zeros(cfg.action_dim))
            self.register_buffer("joint_std", torch.ones(cfg.action_dim))

    def fit_joint_stats(self, joints: torch.Tensor | np.ndarray) -> None:
        """Per-joint mean and std of measured joint positions `(N, A)`: the units of the joint channels
        (`imagine_joints`). A no-op without them."""
        if self.joint_channels:
            self._fit_stats(self.joint_mean, self.joint_std, joints, "joint stats", "joint positions")

    def _fit_stats(self, mean: torch.Tensor, std: torch.Tensor, values: torch.Tensor | np.ndarray, what: str,
                   unit: str) -> None:
        """Per-joint mean and std of `values (N, A)` into the buffers `mean`, `std` (std at least 1e-3)."""
        v = torch.as_tensor(values, dtype=torch.float32).reshape(-1, self.cfg.action_dim)
        if len(v) < 2 or not torch.isfinite(v).all():
            raise PolicyError(f"{what} need >= 2 finite {unit}, got {tuple(v.shape)}")
        mean.copy_(v.mean(0))
        std.copy_(v.std(0).clamp(min=1e-3))

    def _check_pose(self, pose: torch.Tensor | np.ndarray | None, what: str) -> torch.Tensor:
        """The measured joint positions `(A,)` a sampling call starts from (needed with `imagine_joints`)."""
        if pose is None:
            raise PolicyError(f"this world model imagines the joints too: {what} needs pose, the {self.cfg.action_dim} "
                              "measured joint positions at the start frame")
        pose = torch.as_tensor(pose, dtype=torch.float32).to(self.device)
        if pose.shape != (self.cfg.action_dim,) or not torch.isfinite(pose).all():
            raise PolicyError(f"pose must be {self.cfg.action_dim} finite joint positions, got {tuple(pose.shape)}")
        return pose

    def _joint_planes(self, poses: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Joint positions `(B, t, A)` -> standardised channels `(B, A, t, h, w)`, constant over each frame."""
        q = (poses.to(self.device, torch.float32) - self.joint_mean) / self.joint_std
        return q.permute(0, 2, 1)[..., None, None].expand(-1, -1, -1, h, w)

    def _check_goal(self, goal: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
        """A sampling call's task goals (`goal_joints`): `(A,)` or `(K, A)` joint positions (`envs.goals.task_goals`;
        the model reads its first `goal_count` rows), each finite or all NaN (that goal unknown), or None for a task
        without goals. A model without goal channels refuses a goal rather than ignore it."""
        if goal is None:
            return None
        if not self.goal_channels:
            raise PolicyError("this world model was trained without goal_joints: it takes no goal")
        goal = torch.as_tensor(goal, dtype=torch.float32).to(self.device)
        goal = goal[None] if goal.ndim == 1 else goal
        a = self.cfg.action_dim
        if goal.ndim != 2 or goal.shape[1] != a or not (torch.isfinite(goal).all(-1) | torch.isnan(goal).all(-1)).all():
            raise PolicyError(f"goal must be {a} finite joint positions, or (K, {a}) rows of them (a row of NaN: "
                              f"unknown), got {tuple(goal.shape)}")
        return goal

    def _goal_planes(self, goal: torch.Tensor | None, b: int, t: int, h: int, w: int) -> torch.Tensor:
        """Task goals `(B, A)` or `(B, K, A)` (rows of NaN, or None for all: unknown) -> `(B, goal_count * (A + 1),
        t, h, w)`: each of the first `goal_count` goals in the joint channels' units (0 where unknown) and its flag
        plane, constant over the clip."""
        k, a = self.cfg.goal_count, self.cfg.action_dim
        g = torch.full((b, k, a), float("nan"), device=self.device)
        if goal is not None:
            goal = goal.to(self.device, torch.float32)
            goal = goal[:, None] if goal.ndim == 2 else goal
            g[:, : min(k, goal.shape[1])] = goal[:, :k]
        known = torch.isfinite(g).all(-1, keepdim=True)  # (B, K, 1)
        q = torch.where(known, (torch.nan_to_num(g) - self.joint_mean) / self.joint_std, torch.zeros_like(g))
        v = torch.cat([q, known.float()], -1).reshape(b, k * (a + 1))
        return v[:, :, None, None, None].expand(-1, -1, t, h, w)

    def _frame_joint_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Noise `(B, C, t, h, w)` with each joint channel's draw held over its frame (`joint_noise=frame`): the
        first position's draw, a standard normal as the others are."""
        if self.joint_channels and self.cfg.joint_noise == "frame":
            c = self.video_channels
            noise[:, c:] = noise[:, c:, :, :1, :1].clone().expand(-1, -1, -1, *noise.shape[-2:])
        return noise

    def _frame_joints(self, x: torch.Tensor) -> torch.Tensor:
        """A sample's joint channels back onto planes constant over their frame (their mean), as the joints are,
        after a sampling step (`joint_noise=frame`)."""
        if self.joint_channels and self.cfg.joint_noise == "frame":
            c = self.video_channels
            x[:, c:] = x[:, c:].mean((-2, -1), keepdim=True).expand(-1, -1, -1, *x.shape[-2:])
        return x

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A latent `(B, C, t, h, w)` -> its video latent and its joint positions `(B, t, A)` in native units
        (the mean of each joint's channel over its frame), None without joint channels."""
        c = self.video_channels
        if not self.joint_channels:
            return z, None
        q = z[:, c:].float().mean((-2, -1)).permute(0, 2, 1)  # (B, t, A)
        return z[:, :c], q * self.joint_std + self.joint_mean

    def fit_action_stats(self, actions: torch.Tensor | np.ndarray) -> None:
        """Per-joint mean and std of native actions `(N, A)` (tensor or array): the action chunk is standardised with
        them before it is embedded (joint targets span ~0.3 rad, the gripper ~0.02: unscaled, the
        gripper is invisible to the embedding). A no-op unless `normalize_actions`."""
        if hasattr(self, "action_mean"):
            self._fit_stats(self.action_mean, self.action_std, actions, "action stats", "actions")

    def _tap(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """Forward hook on the block the action head reads: keeps its output `(B, L, D)` while training (and
        for `plan_actions`)."""
        if self.training or self._tap_now:
            self._tapped = output

    def _imagined_actions(self, b: int, t: int) -> torch.Tensor:
        """The action head's standardised chunk `(B, t - 1, r * A)` leading into latent frames 1.., from the
        tokens the last transformer call left at the tapped block."""
        h = self._tapped
        self._tapped = None
        if h is None:
            raise PolicyError("the action head has no tapped block output: call it right after a training forward")
        frames = h.float().reshape(b, t, -1, h.shape[-1]).mean(2)  # tokens are (t, h, w)-ordered
        return self.action_head(frames[:, 1:])

    def _plan_scale(self) -> torch.Tensor:
        """The action head's unit per joint: the action std when the model standardises actions, else 1."""
        if hasattr(self, "action_std"):
            return self.action_std
        return torch.ones(self.cfg.action_dim, device=self.device)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # ----------------------------------------------------------------------------- conditioning
    def _encode(self, video: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W) -> (B, C, t, h, w)
        if self.vae.trainable:
            return self.vae.encode(video)
        with torch.no_grad():
            return self.vae.encode(video)

    def _cond_latents(self, start: torch.Tensor, num_frames: int, z0: torch.Tensor | None = None,
                      pose: torch.Tensor | None = None):
        """Start frames `(B, T0, 3, H, W)` -> latents `(B, C, t, h, w)` (last one held) and how many
        latent frames they fix. With joint channels, `z0` (training) already holds them; otherwise `pose (B, A)`,
        the start frame's joint positions, is held over the clip."""
        r, t0 = self.cfg.temporal_factor, start.shape[1]
        t_lat = 1 + (num_frames - 1) // r
        n_cond = 1 + (t0 - 1) // r
        if r == 1:
            z = z0[:, :, :t0] if z0 is not None else self._encode(start)  # (B, C, T0, h, w)
            z = torch.cat([z, z[:, :, -1:].expand(-1, -1, t_lat - t0, -1, -1)], dim=2)
        else:  # a temporal VAE needs the whole (held) video
            held = torch.cat([start, start[:, -1:].expand(-1, num_frames - t0, -1, -1, -1)], dim=1)
            z = self._encode(held)
        if self.joint_channels and not (r == 1 and z0 is not None):  # (z0's joint channels came with it)
            if pose is None:
                raise PolicyError("the joint channels of the start latents need the start frame's joint positions")
            z = torch.cat([z, self._joint_planes(pose[:, None].expand(-1, t_lat, -1), *z.shape[-2:])], dim=1)
        return z, n_cond

    def _cond_channels(self, cond: torch.Tensor, n_cond: int, actions: torch.Tensor | None,
                       present: torch.Tensor | None,
                       goal: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, C + 1, t, h, w)` start latent and mask channels (and with `goal_joints` the goal's planes, from
        `goal (B, [K,] A)`), and the per-frame action vectors `(B, t, action_channels)` (actions, flag) that the patch
        embedding adds to every token of their frame (None without action conditioning). The actions are not
        broadcast over pixels."""
        b, _, t, h, w = cond.shape
        mask = torch.zeros(b, 1, t, h, w, device=cond.device, dtype=cond.dtype)
        mask[:, :, :n_cond] = 1.0
        a = None
        if self.action_channels:
            a = torch.zeros(b, t, self.action_channels, device=cond.device, dtype=cond.dtype)
            if actions is not None:
                r, ad = self.cfg.temporal_factor, self.cfg.action_dim
                if actions.shape[1] != (t - 1) * r:
                    raise PolicyError(f"got {actions.shape[1]} actions for {(t - 1) * r + 1} frames")
                keep = present.to(cond.dtype).view(b, 1, 1)
                if hasattr(self, "action_mean"):
                    actions = (actions - self.action_mean) / self.action_std
                a[:, 1:, :-1] = actions.to(cond.dtype).reshape(b, t - 1, r * ad) * keep
                a[:, :, -1:] = keep
        parts = [cond, mask]
        if self.goal_channels:
            parts.append(self._goal_planes(goal, b, t, h, w).to(cond.dtype))
        return torch.cat(parts, dim=1), a

    def _denoise(self, x: torch.Tensor, timestep: torch.Tensor, ehs: torch.Tensor,
                 frame_actions: torch.Tensor | None) -> torch.Tensor:
        """One transformer call, with the per-frame actions handed to the patch embedding and (with
        `caption_adaln`) the caption's states to the timestep embedding."""
        pe = self.transformer.patch_embedding
        te = self.transformer.condition_embedder.time_embedder
        if isinstance(pe, PatchEmbedWithActions):
            pe.frame_actions = frame_actions
        if isinstance(te, TimeEmbeddingWithCaption):
            te.states = ehs
        try:
            return self.transformer(x, timestep, ehs, return_dict=False)[0]
        finally:
            if isinstance(pe, PatchEmbedWithActions):
                pe.frame_actions = None
            if isinstance(te, TimeEmbeddingWithCaption):
                te.states = None

    def _text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden `(B, L, D)` and masked-mean pooled `(B, D)` caption states."""
        hidden, _ = self.text_encoder(captions)
        return hidden, pool_caption(hidden)

    # ----------------------------------------------------------------------------- training
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss (+ success BCE on labelled clips). Batch: video (B, T, 3, H, W) in [0, 1],
        caption list[str], actions (B, T-1, A) or None, success (B,) with NaN for unknown, optional
        episode_success (B,) bool: whether the clip's episode succeeded (see `imagine_from_success`)."""
        cfg, dev = self.cfg, self.device
        video = batch["video"].to(dev, torch.float32)
        b, t_frames = video.shape[:2]
        z0 = self._encode(video)  # (B, C, t, h, w)
        poses = None
        if self.joint_channels:  # the joint positions of every frame, as channels after the video's
            poses = batch.get("poses")
            if poses is None:
                raise PolicyError("a world model with imagine_joints trains on the joint positions of every frame: "
                                  "the batch needs poses (B, T, A)")
            poses = torch.as_tensor(poses, dtype=torch.float32, device=dev)[:, :: cfg.temporal_factor]
            if poses.shape != (b, z0.shape[2], cfg.action_dim):
                raise PolicyError(f"poses must be (B, T, {cfg.action_dim}) for the clip's {t_frames} frames, got "
                                  f"{tuple(batch['poses'].shape)}")
            z0 = torch.cat([z0, self._joint_planes(poses, *z0.shape[-2:])], dim=1)
        cond, n_cond = self._cond_latents(video[:, : cfg.cond_frames], t_frames, z0,
                                          None if poses is None else poses[:, 0])
        actions = batch.get("actions")
        present = None
        if actions is not None:
            actions = actions.to(dev, torch.float32)
            present = torch.rand(b, device=dev) >= cfg.action_dropout
            ok = batch.get("episode_success")
            if cfg.imagine_from_success and ok is not None:  # imagine mode learns only what succeeded
                present |= ~torch.as_tensor(ok, device=dev).bool()
        goal = None
        if self.goal_channels:  # the grasp goal (NaN rows: none), dropped at `goal_dropout`
            goal = batch.get("goal")
            if goal is None:
                raise PolicyError("a world model with goal_joints trains on each clip's grasp goal: the batch needs "
                                  f"goal (B, {cfg.action_dim}), NaN rows for clips without one")
            goal = torch.as_tensor(goal, dtype=torch.float32, device=dev).clone()
            goal = goal[:, None] if goal.ndim == 2 else goal
            if goal.ndim != 3 or goal.shape[0] != b or goal.shape[2] != cfg.action_dim:
                raise PolicyError(f"goal must be (B, {cfg.action_dim}) or (B, K, {cfg.action_dim}), got "
                                  f"{tuple(goal.shape)}")
            goal[torch.rand(b, device=dev) < cfg.goal_dropout] = float("nan")
        chans, frame_actions = self._cond_channels(cond, n_cond, actions, present, goal)

        hidden, pooled = self._text(list(batch["caption"]))
        null, _ = self._text([""])
        drop = (torch.rand(b, device=dev) < cfg.text_dropout).view(b, 1, 1)
        ehs = torch.where(drop, null.expand_as(hidden), hidden)

        t = torch.sigmoid(torch.randn(b, device=dev))  # logit-normal
        t = cfg.flow_shift * t / (1 + (cfg.flow_shift - 1) * t)
        x0 = z0 - cond if cfg.residual else z0  # what is diffused: the video, or its change from the start
        noise = self._frame_joint_noise(torch.randn_like(x0))
        tt = t.view(b, 1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        x_t[:, :, :n_cond] = x0[:, :, :n_cond]
        out = self._denoise(torch.cat([x_t, chans], 1), t * 1000, ehs, frame_actions)
        # loss on x0 itself ("sample"): every noise level weighs the same, so the first sampling steps (which set
        # the coarse motion) are learned as well as the last ones
        target = x0 if cfg.prediction == "sample" else noise - x0
        c = self.video_channels
        loss_fm = F.mse_loss(out[:, :c, n_cond:].float(), target[:, :c, n_cond:])
        loss, logs = loss_fm, {"loss_fm": loss_fm.item()}
        if self.joint_channels:
            loss_j = F.mse_loss(out[:, c:, n_cond:].float(), target[:, c:, n_cond:])
            loss = loss + cfg.joint_loss_weight * loss_j
            logs["loss_joints"] = loss_j.item()
        if self.action_head is not None:
            pred = self._imagined_actions(b, x_t.shape[2])
            if actions is not None and (~present).any():  # imagine-mode clips: say what the robot will do
                pose = batch.get("start_pose")
                if pose is None:
                    raise PolicyError("the action head learns where the joints go from the start frame: the batch "
                                      "needs start_pose (B, A), the joint positions at the clip's first frame")
                target = (actions - pose.to(dev, torch.float32)[:, None]) / self._plan_scale()
                target = target.reshape(b, x_t.shape[2] - 1, -1)
                loss_a = F.mse_loss(pred[~present], target[~present])
                loss = loss + cfg.imagine_action_loss * loss_a
                logs["loss_imagine_action"] = loss_a.item()

        success = batch.get("success")
        if self.success_head is not None and success is not None:
            success = torch.as_tensor(success, dtype=torch.float32, device=dev)
            known = ~torch.isnan(success)
            if known.any():
                logits = self.success_head(z0[:, : self.video_channels, -1], pooled)
                loss_s = F.binary_cross_entropy_with_logits(logits[known].float(), success[known])
                loss = loss + cfg.success_loss_weight * loss_s
                logs["loss_success"] = loss_s.item()
        logs["loss"] = loss.item()
        return loss, logs

    def _velocity(self, out: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The transformer's output as a flow velocity: itself, or `(x_t - x0_hat) / sigma` for sample
        prediction (sigma clamped at SIGMA_MIN so the loss weight 1/sigma^2 stays bounded)."""
        if self.cfg.prediction == "velocity":
            return out
        return (x_t - out.float()) / sigma.clamp(min=SIGMA_MIN)

    # ----------------------------------------------------------------------------- sampling
    def _check_frames(self, frames: torch.Tensor) -> torch.Tensor:
        frames = torch.as_tensor(frames)
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        frames = frames[None] if frames.ndim == 3 else frames
        s = self.cfg.image_size
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, s, s):
            raise PolicyError(f"frames must be (3, {s}, {s}) or (T0, 3, {s}, {s}) in [0, 1], got {tuple(frames.shape)}")
        return frames.to(self.device, torch.float32)

    def _start(self, start: torch.Tensor, caption: str, n: int, seed: int, num_frames: int,
               actions: torch.Tensor | None, pose: torch.Tensor | None = None,
               goal: torch.Tensor | None = None) -> tuple:
        """What a sampling batch of `n` starts from: the held start latents `(n, C, t, h, w)` and how many latent
        frames they fix, the conditioning channels and per-frame actions, the caption's hidden states `(1, L, D)`,
        the starting noise (seeded, drawn on the CPU, the fixed frames written in) and those fixed frames."""
        r = self.cfg.temporal_factor
        if (num_frames - 1) % r or num_frames <= start.shape[0]:
            raise PolicyError(f"num_frames={num_frames} must exceed the {start.shape[0]} start frames and be 1 + {r}k")
        cond, n_cond = self._cond_latents(start[None], num_frames, pose=None if pose is None else pose[None])
        cond = cond.expand(n, -1, -1, -1, -1)
        present = torch.ones(n, dtype=torch.bool, device=self.device) if actions is not None else None
        goal = self._check_goal(goal)
        chans, frame_actions = self._cond_channels(cond, n_cond, actions, present,
                                                   None if goal is None else goal[None].expand(n, -1, -1))
        hidden, _ = self._text([caption])
        x = self._frame_joint_noise(torch.randn(cond.shape, generator=torch.Generator().manual_seed(int(seed))))
        x = x.to(self.device)
        clean = torch.zeros_like(cond) if self.cfg.residual else cond  # the fixed start frames
        x[:, :, :n_cond] = clean[:, :, :n_cond]
        return cond, n_cond, chans, frame_actions, hidden, x, clean

    @torch.no_grad()
    def _sample(self, start: torch.Tensor, caption: str, n: int, steps: int, guidance: float, seed: int,
                num_frames: int, actions: torch.Tensor | None = None, action_guidance: float = 1.0,
                pose: torch.Tensor | None = None, churn: float = 0.0,
                goal: torch.Tensor | None = None,
                goal_guidance: float | Sequence[float] = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`n` futures: videos `(n, T, 3, H, W)` and, with joint channels, their joint positions `(n, t, A)`.

        `goal_guidance`: one scale for all `n`, or one per future (a spread of guidance across the batch).

        `churn` in [0, 1]: how much of the noise left after each sampling step is drawn fresh (seeded by `seed`)
        instead of carried over from the step's own estimate. 0 is the deterministic Euler (ODE) sampler; 1
        re-noises the predicted clean sample completely at every step (ancestral sampling), so futures from
        close starting noise can part later in the sampling, not only where it starts."""
        if not 0.0 <= churn <= 1.0:
            raise PolicyError(f"churn must be in [0, 1], got {churn}")
        dev = self.device
        if self.joint_channels:
            pose = self._check_pose(pose, "sampling")
        cond, n_cond, chans, frame_actions, hidden, x, clean = self._start(start, caption, n, seed, num_frames, actions,
                                                                           pose, goal)
        # classifier-free guidance: on the caption (against the empty one), on the actions (against none, which
        # training's action dropout teaches) and on the goals (against unknown ones, which goal_dropout teaches):
        # one extra batch branch each
        gg = [float(goal_guidance)] * n if isinstance(goal_guidance, (int, float)) else [float(g) for g in goal_guidance]
        if len(gg) != n or not all(math.isfinite(g) and g >= 0 for g in gg):
            raise PolicyError(f"goal_guidance must be a finite number >= 0 or {n} of them, got {goal_guidance}")
        branches = ["cond"] + (["text"] if guidance != 1.0 else []) + \
            (["actions"] if action_guidance != 1.0 and actions is not None else []) + \
            (["goal"] if any(g != 1.0 for g in gg) and goal is not None and self.goal_channels else [])
        empty = self._text([""])[0] if "text" in branches else None
        ehs = torch.cat([(empty if name == "text" else hidden).expand(n, -1, -1) for name in branches])
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.cfg.flow_shift)
        sched.set_timesteps(steps, device=dev)
        c = x.shape[1]
        reps = len(branches)
        inp = torch.cat([torch.zeros_like(x), chans], 1).repeat(reps, 1, 1, 1, 1)  # conditioning written once
        if "goal" in branches:  # the same clip with its goals unknown: zero planes, flags off (_goal_planes)
            k = branches.index("goal")
            inp[k * n:(k + 1) * n, -self.goal_channels:] = 0.0
        if frame_actions is not None:  # the "actions" branch: the same clip with no actions given (zeros, flag 0)
            frame_actions = torch.cat([torch.zeros_like(frame_actions) if name == "actions" else frame_actions
                                       for name in branches])
        scale = {"text": guidance, "actions": action_guidance,
                 "goal": torch.tensor(gg, device=dev).view(n, *[1] * (x.ndim - 1))}  # per future
        fresh = torch.Generator().manual_seed(int(seed) + 1_000_003)  # churn: apart from any starting noise
        for i, ts in enumerate(sched.timesteps):
            for k in range(reps):
                inp[k * n:(k + 1) * n, :c] = x
            out = self._denoise(inp, ts.expand(reps * n), ehs, frame_actions).float()
            v_all = self._velocity(out, inp[:, :c], sched.sigmas[i].to(dev)).chunk(reps)
            v = v_all[0]
            for name, v_u in zip(branches[1:], v_all[1:], strict=True):
                v = v + (scale[name] - 1.0) * (v_all[0] - v_u)
            if churn > 0.0:  # x_t = (1 - s) x0 + s eps: keep the estimate of x0, draw part of eps anew
                s, s_next = sched.sigmas[i].to(dev), sched.sigmas[i + 1].to(dev)
                x0_hat, eps_hat = x - s * v, x + (1.0 - s) * v
                eps = self._frame_joint_noise(torch.randn(x.shape, generator=fresh)).to(dev)
                eps = (1.0 - churn ** 2) ** 0.5 * eps_hat + churn * eps
                x = self._frame_joints((1.0 - s_next) * x0_hat + s_next * eps)
            else:
                x = self._frame_joints(sched.step(v, ts, x, return_dict=False)[0])
            x[:, :, :n_cond] = clean[:, :, :n_cond]
        z, joints = self._split(x + cond if self.cfg.residual else x)
        return self.vae.decode(z), joints  # (n, T, 3, H, W)

    def imagine(self, frames: torch.Tensor, caption: str, n: int = 4, steps: int = 8, guidance: float = 2.0,
                seed: int = 0, num_frames: int | None = None, plan: bool = False,
                pose: torch.Tensor | None = None, churn: float = 0.0, goal: torch.Tensor | None = None,
                goal_guidance: float | Sequence[float] = 1.0) -> torch.Tensor:
        """Imagine `n` futures from start frame(s) `(3, H, W)` or `(T0, 3, H, W)` in one batch.
        Returns `(n, T, 3, H, W)` in [0, 1] on the CPU; the start frames come back unchanged.

        `plan` (needs the action head, `imagine_action_loss` > 0, and the measured joint positions `pose (A,)`):
        decide, then draw. One imagine-mode call on each candidate's starting noise reads where the joints go
        off the action head (`plan_actions`), and the future is drawn in evaluation mode under that plan.
        `churn`: fresh noise at every sampling step (`_sample`); 0 is the deterministic sampler. `goal (A,)` or
        `(K, A)`: the task goals of a `goal_joints` model (`envs.goals.task_goals`; None: the task has none).
        `goal_guidance`: classifier-free guidance on the goals, against the same start with them unknown (1.0: none;
        above 1 pushes the future further toward what the goals change), one for all or one per future."""
        return self.imagine_joints(frames, caption, n, steps, guidance, seed, num_frames, plan, pose, churn, goal,
                                   goal_guidance)[0]

    def imagine_joints(self, frames: torch.Tensor, caption: str, n: int = 4, steps: int = 8, guidance: float = 2.0,
                       seed: int = 0, num_frames: int | None = None, plan: bool = False,
                       pose: torch.Tensor | None = None, churn: float = 0.0,
                       goal: torch.Tensor | None = None,
                       goal_guidance: float | Sequence[float] = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`imagine`, and with `imagine_joints` the imagined joint positions `(n, T, A)` of every frame (the first
        is `pose`, the measured ones the model is given); None for a model without joint channels."""
        start = self._check_frames(frames)
        num_frames = num_frames or self.cfg.num_frames
        actions = None
        if plan:
            if pose is None:
                raise PolicyError("imagine(plan=True) needs pose: the measured joint positions the plan starts from")
            actions = self._plan(start, caption, pose, n, seed, num_frames, goal)
        video, joints = self._sample(start, caption, n, steps, guidance, seed, num_frames, actions, pose=pose,
                                     churn=churn, goal=goal, goal_guidance=goal_guidance)
        return video.cpu(), None if joints is None else joints.cpu()

    @torch.no_grad()
    def plan_actions(self, frames: torch.Tensor, caption: str, pose: torch.Tensor, n: int = 4, seed: int = 0,
                     num_frames: int | None = None) -> torch.Tensor:
        """The action head's reading `(n, T-1, A)` (native units) of what the robot does next from the joint
        positions `pose (A,)`, from one imagine-mode call at full noise: candidate k starts from the noise
        `imagine(..., seed)` gives it."""
        return self._plan(self._check_frames(frames), caption, pose, n, seed, num_frames or self.cfg.num_frames)

    @torch.no_grad()
    def _plan(self, start: torch.Tensor, caption: str, pose: torch.Tensor, n: int, seed: int,
              num_frames: int, goal: torch.Tensor | None = None) -> torch.Tensor:
        if self.action_head is None:
            raise PolicyError("this world model has no action head (train it with world_model.imagine_action_loss > 0)")
        pose = self._check_pose(pose, "a plan")
        cond, _, chans, frame_actions, hidden, x, _ = self._start(start, caption, n, seed, num_frames, None,
                                                                  pose if self.joint_channels else None, goal)
        self._tap_now = True
        try:
            self._denoise(torch.cat([x, chans], 1), torch.full((n,), 1000.0, device=self.device),
                          hidden.expand(n, -1, -1), frame_actions)
            plan = self._imagined_actions(n, cond.shape[2]).reshape(n, -1, self.cfg.action_dim)
        finally:
            self._tap_now = False
        return (pose + plan * self._plan_scale()).cpu()

    def predict(self, frames: torch.Tensor, actions: torch.Tensor, caption: str = "", seed: int = 0,
                steps: int | None = None, guidance: float = 1.0,
                action_guidance: float = 1.0, pose: torch.Tensor | None = None,
                goal: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """Evaluation mode: what happens under exactly these `actions (T-1, A)`. Returns the video
        `(T, 3, H, W)` and the success head's probability on its final frame (NaN without a head).
        `steps=None` takes the config's `predict_steps`; `pose`: the start frame's joint positions (needed with
        `imagine_joints`)."""
        actions = torch.as_tensor(actions, dtype=torch.float32)
        if actions.ndim != 2:
            raise PolicyError(f"actions must be (T-1, {self.cfg.action_dim}), got {tuple(actions.shape)}")
        video = self.predict_many(frames, actions[None], caption, seed, steps, guidance, action_guidance, pose, goal)
        p = float(self.success_probs(video, caption)[0]) if self.success_head is not None else float("nan")
        return video[0], p

    @torch.no_grad()
    def predict_many(self, frames: torch.Tensor, actions: torch.Tensor, caption: str = "", seed: int = 0,
                     steps: int | None = None, guidance: float = 1.0, action_guidance: float = 1.0,
                     pose: torch.Tensor | None = None, goal: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation mode for N action sequences from the same start frame(s), as one batch: `actions
        (N, T-1, A)` (action t leads from frame t to t+1; with T0 start frames the first T0-1 are the
        past ones) -> videos `(N, T, 3, H, W)` on the CPU. `guidance` is classifier-free guidance on the
        caption, `action_guidance` on the actions (1.0: none); `pose (A,)`: the start frame's measured joint
        positions (needed with `imagine_joints`)."""
        if not self.cfg.action_conditioning:
            raise PolicyError("this world model was built with action_conditioning=False; it cannot predict")
        start = self._check_frames(frames)
        actions = torch.as_tensor(actions, dtype=torch.float32)
        if actions.ndim != 3 or actions.shape[2] != self.cfg.action_dim:
            raise PolicyError(f"actions must be (N, T-1, {self.cfg.action_dim}), got {tuple(actions.shape)}")
        t_frames = actions.shape[1] + 1
        steps = self.cfg.predict_steps if steps is None else int(steps)
        return self._sample(start, caption, actions.shape[0], steps, guidance, seed, t_frames,
                            actions.to(self.device), action_guidance, pose=pose, goal=goal)[0].cpu()

    @torch.no_grad()
    def success_probs(self, videos: torch.Tensor, caption: str) -> torch.Tensor:
        """P(done) for each video `(N, T, 3, H, W)` (or final frames `(N, 3, H, W)`) -> `(N,)` on CPU."""
        if self.success_head is None:
            raise PolicyError("this world model was built with success_head=False")
        final = videos[:, -1] if videos.ndim == 5 else videos
        z = self._encode(final[:, None].to(self.device, torch.float32))[:, :, -1]  # (N, C, h, w)
        _, pooled = self._text([caption])
        return torch.sigmoid(self.success_head(z, pooled.expand(z.shape[0], -1)).float()).cpu()

    def success_prob(self, video_or_final_frame: torch.Tensor, caption: str) -> float:
        """P(done) of one video `(T, 3, H, W)` or one final frame `(3, H, W)`."""
        x = torch.as_tensor(video_or_final_frame)
        final = x[-1] if x.ndim == 4 else x
        return float(self.success_probs(final[None], caption)[0])

    # ----------------------------------------------------------------------------- checkpoints
    def _stored_state(self) -> dict[str, torch.Tensor]:
        skip = [name + "." for name in ("vae", "text_encoder") if getattr(self, name).external]
        return {k: v for k, v in self.state_dict().items() if not any(k.startswith(s) for s in skip)}

    def save_pretrained(self, directory: str | Path) -> str:
        """Write safetensors + config + sha256 manifest; return the weights' sha256. External frozen
        parts (Wan VAE, pretrained text encoder) are referenced by path, not copied."""
        config = {"world_model": dataclasses.asdict(self.cfg), "transformer": dict(self.transformer.config)}
        return save_checkpoint(directory, self._stored_state(), config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> WorldModel:
        """Load a checkpoint written by `save_pretrained`; CheckpointError if corrupt or incomplete."""
        tensors, config = load_checkpoint(directory)
        try:
            model = cls(WorldModelConfig(**config["world_model"]), transformer_config=config["transformer"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {directory}: config.json does not describe a world model ({e})") from e
        expected = model._stored_state().keys()
        missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
        if missing or extra:
            raise CheckpointError(
                f"checkpoint {directory} does not match its config: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(extra)[:3]}"
            )
        model.load_state_dict(tensors, strict=False)
        return model.to(device).eval()


def _load_pretrained_transformer(cfg: WorldModelConfig, in_channels: int, out_channels: int) -> WanTransformer3DModel:
    """Load Wan weights from a local dir and widen the patch embedding to our conditioning channels:
    the pretrained input channels are copied, the extra ones start at zero (no effect at step 0)."""
    tr = WanTransformer3DModel.from_pretrained(_local_dir(cfg.pretrained_path, "transformer"), local_files_only=True)
    if tr.config.out_channels != out_channels or tr.config.text_dim != cfg.text_dim:
        raise PolicyError(
            f"pretrained transformer at {cfg.pretrained_path} has out_channels={tr.config.out_channels}, "
            f"text_dim={tr.config.text_dim}; the VAE and text encoder need {out_channels}, {cfg.text_dim}"
        )
    old = tr.patch_embedding
    if old.in_channels != in_channels:
        new = nn.Conv3d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride)
        k = min(in_channels, old.in_channels)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, :k] = old.weight[:, :k]
            new.bias.copy_(old.bias)
        tr.patch_embedding = new.to(old.weight.dtype)
        tr.register_to_config(in_channels=in_channels)
    return tr
