"""Inverse dynamics model: two frames W steps apart (+ proprio at the first) -> the W actions between.

A vision backbone encodes both frames (shared weights); their features and the normalised proprio
form the conditioning vector of a flow-matching MLP head that denoises the (W, A) action chunk.
At test time `extract` slides the window over a whole video and averages K noise draws and the
overlapping windows (see `processor_idm`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.errors import CheckpointError, PolicyError
from policies.idm.configuration_idm import IDMConfig
from policies.idm.processor_idm import (
    average_windows,
    num_windows,
    pad_video,
    to_float_frames,
    window_proprio,
)
from policies.world_model.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT_FORMAT = "flywheel-idm/1"  # inside config.json; the file layout is the shared checkpoint format


@dataclass
class Extraction:
    """Actions extracted from a video: actions (T-1, A) float32 and spread (T-1,) across noise draws."""

    actions: Tensor
    spread: Tensor


def snap_grippers(actions: Tensor, cfg: IDMConfig) -> Tensor:
    """Snap the gripper commands of `actions (T, A)` to fully open / closed (see `IDMConfig.gripper_snap`)."""
    if cfg.gripper_snap <= 0 or not cfg.gripper_dims:
        return actions
    dims = list(cfg.gripper_dims)
    lo, hi = cfg.gripper_closed, cfg.gripper_open
    frac = (actions[:, dims] - lo) / (hi - lo)  # 0 closed .. 1 open
    out = actions.clone()
    out[:, dims] = torch.where(frac >= cfg.gripper_snap, torch.tensor(hi), torch.tensor(lo)).to(actions.dtype)
    return out


def color_augment(fs: Tensor, ft: Tensor, p: float, gain: float) -> tuple[Tensor, Tensor]:
    """The same random colour change on both frames `(B, 3, H, W)` of each pair, with probability `p` per
    pair: the RGB channels permuted, then each scaled by a gain in [1 - gain, 1 + gain], clamped to [0, 1]."""
    b = fs.shape[0]
    perm = torch.rand(b, 3, device=fs.device).argsort(1)  # (B, 3): a random permutation per pair
    scale = 1 + gain * (2 * torch.rand(b, 3, device=fs.device) - 1)
    keep = torch.rand(b, device=fs.device) >= p
    perm[keep] = torch.arange(3, device=fs.device)
    scale[keep] = 1.0
    idx = perm[:, :, None, None].expand(-1, -1, *fs.shape[2:])
    scale = scale[:, :, None, None].to(fs.dtype)
    return ((fs.gather(1, idx) * scale).clamp(0, 1), (ft.gather(1, idx) * scale).clamp(0, 1))


def local_quadratic(t_len: int, half: int) -> Tensor:
    """(T, T) smoothing matrix: row t evaluates at t the least-squares quadratic through the frames within
    `half` of t (a Savitzky-Golay filter whose window is cut at the ends and then fits only what it holds)."""
    rows = torch.zeros(t_len, t_len, dtype=torch.float64)
    for t in range(t_len):
        idx = torch.arange(max(0, t - half), min(t_len, t + half + 1), dtype=torch.float64)
        deg = min(2, len(idx) - 1)
        basis = torch.stack([(idx - t) ** p for p in range(deg + 1)], dim=1)  # (n, deg+1), centred at t
        rows[t, idx.long()] = torch.linalg.pinv(basis)[0]  # the fitted value at t is the constant term
    return rows.float()


# ----------------------------------------------------------------------------------------- backbones
class SpatialSoftmax(nn.Module):
    """Feature maps (B, C, h, w) -> the expected (x, y) image position of each map's softmax (B, 2C) in
    [-1, 1]: sub-pixel keypoints, the precise "where is the hand" signal pooling throws away."""

    def forward(self, h: Tensor) -> Tensor:
        b, c, hh, ww = h.shape
        p = torch.softmax(h.flatten(2).float(), dim=-1).view(b, c, hh, ww)
        ys = torch.linspace(-1.0, 1.0, hh, device=h.device)
        xs = torch.linspace(-1.0, 1.0, ww, device=h.device)
        return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1).to(h.dtype)


class SmallCNN(nn.Module):
    """Tiny conv encoder trained from scratch: (B, in_channels, H, W) in [0, 1] -> (B, out_dim).

    Four stride-2 stages pooled to a 4x4 layout; with `cfg.keypoints` > 0, also that many spatial-softmax
    keypoints from the second stage (H/4 resolution)."""

    # channels-last activations (the weights stay contiguous, as safetensors wants them): the training step
    # on CPU is ~20% faster, mostly in the convolutions' backward (bench/bench_idm_train.py measures both)
    channels_last: bool = True

    def __init__(self, cfg: IDMConfig, in_channels: int = 3, out_dim: int | None = None) -> None:
        super().__init__()
        c = cfg.cnn_channels
        chans = [in_channels, c, 2 * c, 4 * c, 4 * c]
        stages: list[nn.Module] = []
        for i in range(4):
            stages.append(nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1),
                nn.GroupNorm(8 if chans[i + 1] % 8 == 0 else 1, chans[i + 1]),
                nn.SiLU(),
            ))
        self.low, self.high = nn.Sequential(*stages[:2]), nn.Sequential(*stages[2:], nn.AdaptiveAvgPool2d(4))
        self.kp = (nn.Sequential(nn.Conv2d(2 * c, cfg.keypoints, 1), SpatialSoftmax()) if cfg.keypoints else None)
        self.proj = nn.Linear(4 * c * 16 + 2 * cfg.keypoints, out_dim or cfg.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x * 2.0 - 1.0
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        low = self.low(x)  # (B, 2c, H/4, W/4)
        h = self.high(low).flatten(1)  # (B, 4c * 16): a 4x4 layout, where things are
        if self.kp is not None:
            h = torch.cat([h, self.kp(low)], dim=-1)  # + (B, 2K) keypoints
        return self.proj(h)  # (B, out_dim)


class DepthAnythingBackbone(nn.Module):
    """The DINOv2 encoder of a transformers Depth Anything checkpoint: (B, 3, H, W) -> (B, feature_dim).

    Built from the local directory `cfg.backbone_path` (never downloaded) or, when loading an IDM
    checkpoint, from the Depth Anything config saved with it (weights then come from the checkpoint).
    Features: the CLS token and the mean patch token of the last stage, projected.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, cfg: IDMConfig, hf_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForDepthEstimation

        if hf_config is not None:
            model = AutoModelForDepthEstimation.from_config(AutoConfig.for_model(**hf_config))
        else:
            path = cfg.backbone_path
            if not path or not (Path(path) / "config.json").is_file():
                raise PolicyError(
                    f"idm.backbone=depth_anything needs idm.backbone_path, a local directory with a "
                    f"transformers Depth Anything checkpoint (config.json + weights); got {path!r}"
                )
            try:
                model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as e:
                raise PolicyError(f"cannot load Depth Anything from {path}: {e}") from e
        self.hf_config = model.config.to_dict()
        self.encoder = model.backbone  # the depth neck/head are not used
        self.patch = int(model.config.patch_size)
        self.side = max(self.patch, round(cfg.image_size / self.patch) * self.patch)
        hidden = int(model.config.backbone_config.hidden_size)
        self.proj = nn.Linear(2 * hidden, cfg.feature_dim)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        fm = self.encoder((x - self.mean) / self.std).feature_maps[-1]
        if fm.dim() == 4:  # (B, C, h, w) when the backbone reshapes its tokens
            pooled = torch.cat([fm.mean(dim=(2, 3)), fm.amax(dim=(2, 3))], dim=-1)
        else:  # (B, 1 + N, C)
            pooled = torch.cat([fm[:, 0], fm[:, 1:].mean(dim=1)], dim=-1)
        return self.proj(pooled)  # (B, feature_dim)


def make_backbone(cfg: IDMConfig, hf_config: dict[str, Any] | None = None) -> nn.Module:
    """Backbone registry: every backbone maps (B, 3, H, W) in [0, 1] to (B, cfg.feature_dim)."""
    if cfg.target == "pose":  # one feature vector per frame ("frame") or per [frame s, frame t] pair ("pair")
        if cfg.backbone == "small_cnn":
            return SmallCNN(cfg, in_channels=9 if cfg.pose_input == "pair" else 3)
        return DepthAnythingBackbone(cfg, hf_config)
    if cfg.backbone == "small_cnn" and cfg.fusion == "early":  # the stacked pair in, both frames' features out
        return SmallCNN(cfg, in_channels=9, out_dim=2 * cfg.feature_dim)
    if cfg.backbone == "small_cnn":
        return SmallCNN(cfg)
    if cfg.backbone == "depth_anything":
        return DepthAnythingBackbone(cfg, hf_config)
    raise PolicyError(f"unknown idm.backbone {cfg.backbone!r}")


# -------------------------------------------------------------------------------------- flow head
def timestep_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of the flow time sigma in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=sigma.device) / half)
    args = sigma[:, None].float() * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Block(nn.Module):
    """Transformer block over the W action tokens, conditioned by adaptive LayerNorm (shift/scale/gate)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)  # each (B, 1, d)
        h = self.norm1(x) * (1 + sc1) + sh1
        x = x + g1 * self.attn(h, h, h, need_weights=False)[0]
        return x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + sh2)


class FlowHead(nn.Module):
    """Velocity field v(x_sigma, sigma, cond): a small transformer over the W action steps.

    x (B, W*D) flattened chunk, sigma (B,), cond (B, d) -> (B, W*D), with D the per-step token size
    (A, or 2A when the joint positions are denoised with the actions). One token per step keeps the
    width per token (hidden_dim) well above D, so the head can carry x through to v.
    """

    def __init__(self, cfg: IDMConfig, token_dim: int | None = None) -> None:
        super().__init__()
        d, self.w, self.a = cfg.hidden_dim, cfg.window, token_dim or cfg.action_dim
        self.inp = nn.Linear(self.a, d)
        self.pos = nn.Parameter(torch.randn(1, cfg.window, d) * 0.02)
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(_Block(d, cfg.head_heads) for _ in range(cfg.head_layers))
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.ada = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, self.a)
        for lin in (self.ada, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        b = x.shape[0]
        c = cond + self.time(timestep_embedding(sigma, cond.shape[-1]))  # (B, d)
        h = self.inp(x.reshape(b, self.w, self.a)) + self.pos  # (B, W, d)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(F.silu(c))[:, None].chunk(2, dim=-1)
        return self.out(self.norm(h) * (1 + scale) + shift).reshape(b, -1)  # (B, W*A)


def _legacy_small_cnn_keys(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints written before the small CNN was split in two stage groups name its layers
    `backbone.net.{3 * stage + layer}`; map them to `backbone.low|high.{stage}.{layer}`."""
    out = {}
    for k, v in tensors.items():
        m = re.fullmatch(r"backbone\.net\.(\d+)\.(weight|bias)", k)
        if m:
            stage, layer = divmod(int(m.group(1)), 3)
            k = f"backbone.{'low' if stage < 2 else 'high'}.{stage % 2}.{layer}.{m.group(2)}"
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------ model
class InverseDynamicsModel(nn.Module):
    """IDM with `forward(batch) -> (loss, logs)` for training and `extract(video, proprio0)` for inference.

    batch: frame0, frame1 float (B, 3, H, W) in [0, 1] (W steps apart), proprio (B, P) at frame0,
    actions (B, W, A) in native units and, for `target="delta"`, qpos (B, W, A): the joint positions
    at frames 1..W. Normalisation stats live in buffers (saved with the weights); fit them from data
    with `fit_normalization` before training.
    """

    def __init__(self, config: IDMConfig | None = None, backbone_hf_config: dict[str, Any] | None = None):
        super().__init__()
        self.config = cfg = config or IDMConfig()
        self.backbone = make_backbone(cfg, backbone_hf_config)
        if cfg.freeze_backbone and cfg.backbone != "small_cnn":
            for p in self.backbone.encoder.parameters():
                p.requires_grad_(False)
        d = cfg.hidden_dim
        self.delta = cfg.target == "delta"
        self.pose = cfg.target == "pose"
        self.token_dim = 2 * cfg.action_dim if self.delta else cfg.action_dim
        if self.pose:  # a regression head on the backbone: joint positions, normalised by pose_mean / pose_std
            self.pose_head = nn.Sequential(nn.SiLU(), nn.Linear(cfg.feature_dim, cfg.action_dim))
            if cfg.pose_grip == "classify":  # logits of "the grip command before this frame was closed"
                self.grip_head = nn.Sequential(nn.SiLU(), nn.Linear(cfg.feature_dim, len(cfg.gripper_dims)))
            self.register_buffer("pose_mean", torch.zeros(cfg.action_dim))
            self.register_buffer("pose_std", torch.ones(cfg.action_dim))
            self.register_buffer("lead", torch.zeros(cfg.action_dim))
        else:
            self.cond = nn.Sequential(
                nn.Linear(2 * cfg.feature_dim + cfg.proprio_dim, d), nn.SiLU(), nn.Linear(d, d)
            )
            self.head = FlowHead(cfg, self.token_dim)
        self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
        self.register_buffer("action_std", torch.ones(cfg.action_dim))
        self.register_buffer("proprio_mean", torch.zeros(cfg.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(cfg.proprio_dim))
        if self.delta:  # per step and joint: [actions - q0, qpos - q0] over the window
            self.register_buffer("delta_mean", torch.zeros(cfg.window, self.token_dim))
            self.register_buffer("delta_std", torch.ones(cfg.window, self.token_dim))
        self.register_buffer("stats_fitted", torch.zeros((), dtype=torch.bool))

    # -- normalisation
    @torch.no_grad()
    def fit_normalization(
        self, actions: Tensor, proprio: Tensor, deltas: Tensor | None = None, min_std: float = 1e-3
    ) -> None:
        """Set the stats from data: actions (N, A), proprio (N, P) in native units; for the delta target
        also deltas (M, W, 2A) = [actions - q0, qpos - q0] per window (see `WindowDataset.deltas`).
        Without deltas the delta stats default to zero mean and the per-joint action std."""
        self.action_mean.copy_(actions.float().mean(0))
        self.action_std.copy_(actions.float().std(0).clamp_min(min_std))
        self.proprio_mean.copy_(proprio.float().mean(0))
        self.proprio_std.copy_(proprio.float().std(0).clamp_min(min_std))
        if self.pose:
            self._fit_pose(deltas, min_std)
        if self.delta:
            if deltas is None:
                self.delta_mean.zero_()
                self.delta_std.copy_(self.action_std.repeat(2).expand_as(self.delta_std))
            else:
                want = (self.config.window, self.token_dim)
                if deltas.dim() != 3 or tuple(deltas.shape[1:]) != want:
                    raise PolicyError(f"fit_normalization needs deltas (M, {want[0]}, {want[1]}), "
                                      f"got {tuple(deltas.shape)}")
                self.delta_mean.copy_(deltas.float().mean(0))
                self.delta_std.copy_(deltas.float().std(0).clamp_min(min_std))
        self.stats_fitted.fill_(True)

    @property
    def needs_deltas(self) -> bool:
        """Whether `fit_normalization` wants the windows' deltas (`WindowDataset.deltas`)."""
        return self.delta or self.pose

    def _fit_pose(self, deltas: Tensor | None, min_std: float) -> None:
        """Pose stats and the per-joint `lead` of the targets over the positions, from deltas (M, W, 2A).
        Without deltas: pair stats of zero mean and the per-joint action std, frame stats the proprio's, no lead."""
        a = self.config.action_dim
        if deltas is None:
            pair = self.config.pose_input == "pair"
            self.pose_mean.copy_(torch.zeros(a) if pair else self.proprio_mean[:a])
            self.pose_std.copy_(self.action_std if pair else self.proprio_std[:a])
            self.lead.zero_()
            return
        if deltas.dim() != 3 or deltas.shape[-1] != 2 * a:
            raise PolicyError(f"the pose IDM fits its stats from deltas (M, W, {2 * a}), got {tuple(deltas.shape)}")
        deltas = deltas.float()
        if self.config.pose_input == "pair":  # q_t - q_s over the window's steps
            self.pose_mean.zero_()
            self.pose_std.copy_(deltas[..., a:].reshape(-1, a).std(0).clamp_min(min_std))
        else:
            self.pose_mean.copy_(self.proprio_mean[:a])
            self.pose_std.copy_(self.proprio_std[:a])
        # target - next position against next position - position, first step of every window: least squares
        step = deltas[:, 0, a:]  # q_1 - q_0
        ahead = deltas[:, 0, :a] - step  # a_0 - q_1
        den = (step * step).sum(0)
        lead = torch.where(den > 1e-8, (ahead * step).sum(0) / den.clamp_min(1e-8), torch.zeros_like(den))
        self.lead.copy_(lead.clamp(0.0, 2.0))

    def _norm_proprio(self, p: Tensor) -> Tensor:
        """Standardised proprio, with what `proprio_input` hides set to 0 (the mean)."""
        z = (p - self.proprio_mean) / self.proprio_std
        keep = self.config.proprio_input
        if keep == "none":
            return torch.zeros_like(z)
        if keep == "position":
            z = z.clone()
            z[..., self.config.action_dim:] = 0.0
        return z

    def _to_x0(self, actions: Tensor, qpos: Tensor | None, q0: Tensor) -> Tensor:
        """Native (B, W, A) chunk(s) -> normalised flat (B, W*D) flow target."""
        b = actions.shape[0]
        if not self.delta:
            return ((actions - self.action_mean) / self.action_std).reshape(b, -1)
        if qpos is None:
            raise PolicyError("the delta IDM target needs batch['qpos'] (B, W, A): joint positions at frames 1..W")
        raw = torch.cat([actions - q0[:, None], qpos - q0[:, None]], dim=-1)  # (B, W, 2A)
        return ((raw - self.delta_mean) / self.delta_std).reshape(b, -1)

    def _from_x0(self, x: Tensor, q0: Tensor | None) -> Tensor:
        """Normalised flat (B, W*D) -> native actions (B, W, A) (absolute), or (B, W, 2A) [actions,
        qpos] made absolute by adding q0 (B, A) (delta)."""
        x = x.reshape(x.shape[0], self.config.window, self.token_dim)
        if not self.delta:
            return x * self.action_std + self.action_mean
        return x * self.delta_std + self.delta_mean + q0[:, None].repeat(1, 1, 2)

    # -- pieces
    def encode_frames(self, frames: Tensor) -> Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, feature_dim); resized to image_size when needed."""
        s = self.config.image_size
        if self.config.backbone == "small_cnn" and frames.shape[-2:] != (s, s):
            frames = F.interpolate(frames, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return self.backbone(frames)

    def encode_pairs(self, frame0: Tensor, frame1: Tensor) -> Tensor:
        """Both frames of B windows (B, 3, H, W) each -> (B, 2 * feature_dim)."""
        if self.config.fusion == "early":
            s = self.config.image_size
            pair = torch.cat([frame0, frame1], dim=0)
            if pair.shape[-2:] != (s, s):
                pair = F.interpolate(pair, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            f0, f1 = pair.chunk(2)
            return self.backbone(torch.cat([f0, f1, f1 - f0], dim=1))
        b = frame0.shape[0]
        feats = self.encode_frames(torch.cat([frame0, frame1], dim=0))
        return torch.cat([feats[:b], feats[b:]], dim=-1)

    def condition(self, f0: Tensor, f1: Tensor, proprio: Tensor) -> Tensor:
        """Features of both frames (B, F) + proprio (B, P) -> conditioning vector (B, hidden_dim)."""
        return self.cond(torch.cat([f0, f1, self._norm_proprio(proprio)], dim=-1))

    @property
    def device(self) -> torch.device:
        return self.action_mean.device

    # -- pose target
    def _resized(self, frames: Tensor) -> Tensor:
        s = self.config.image_size
        if self.config.backbone == "small_cnn" and frames.shape[-2:] != (s, s):
            frames = F.interpolate(frames, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return frames

    def _pose_features(self, frame_s: Tensor, frame_t: Tensor | None = None) -> Tensor:
        if self.config.pose_input == "pair":
            if frame_t is None:
                raise PolicyError("the pair pose IDM reads two frames")
            x0, x1 = self._resized(torch.cat([frame_s, frame_t], dim=0)).chunk(2)
            return self.backbone(torch.cat([x0, x1, x1 - x0], dim=1))
        return self.encode_frames(frame_s)

    def read(self, frame_s: Tensor, frame_t: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """What the pose IDM reads off (B, 3, H, W) frames: joint positions in native units, q_t - q_s of the
        pairs ("pair") or q of frame_s ("frame"); and with pose_grip="classify" the probability (B, G) that
        the grip commands before frame_t (pair) / frame_s (frame) were closed (else None)."""
        h = self._pose_features(frame_s, frame_t)
        grip = torch.sigmoid(self.grip_head(h)) if self.config.pose_grip == "classify" else None
        return self.pose_head(h) * self.pose_std + self.pose_mean, grip

    def read_pose(self, frame_s: Tensor, frame_t: Tensor | None = None) -> Tensor:
        """The joint positions of `read`."""
        return self.read(frame_s, frame_t)[0]

    def _pose_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Regression of the joint positions at a random pair of the window's frames (t - s uniform in 1..W)."""
        cfg, a = self.config, self.config.action_dim
        frames = batch.get("frames")  # (B, W+1, 3, H, W) float or (B, W+1, H, W, 3) uint8 env frames
        if frames is None or frames.ndim != 5:
            raise PolicyError("the pose IDM trains on batch['frames'] (B, W+1, 3, H, W): WindowDataset(all_frames=True)")
        b, w = frames.shape[0], frames.shape[1] - 1
        q = torch.cat([batch["proprio"][:, None, :a], batch["qpos"]], dim=1)  # (B, W+1, A)
        k = torch.randint(1, w + 1, (b,), device=frames.device)
        s = (torch.rand(b, device=frames.device) * (w - k + 1)).long()
        t, rows = s + k, torch.arange(b, device=frames.device)
        fs, ft = frames[rows, s], frames[rows, t]
        if fs.dtype == torch.uint8:  # only the pair is converted, not the whole window
            fs, ft = to_float_frames(fs), to_float_frames(ft)
        # contiguous: the converted frames are a channels-last view, on which the noise below (randn of the
        # same strides) and the convolutions run several times slower on CPU
        fs, ft = fs.contiguous(), ft.contiguous()
        if self.training and cfg.pose_color_aug > 0:
            fs, ft = color_augment(fs, ft, cfg.pose_color_aug, cfg.pose_color_gain)
        if self.training and cfg.pose_noise > 0:
            fs = (fs + cfg.pose_noise * torch.randn(fs.shape, dtype=fs.dtype, device=fs.device)).clamp(0, 1)
            ft = (ft + cfg.pose_noise * torch.randn(ft.shape, dtype=ft.dtype, device=ft.device)).clamp(0, 1)
        if cfg.pose_input == "pair":
            h = self._pose_features(fs, ft)
            pred, true = self.pose_head(h) * self.pose_std + self.pose_mean, q[rows, t] - q[rows, s]
        else:
            h = self._pose_features(torch.cat([fs, ft]))
            pred, true = self.pose_head(h) * self.pose_std + self.pose_mean, torch.cat([q[rows, s], q[rows, t]])
        loss = F.mse_loss(((pred - true) / self.pose_std).float(), torch.zeros_like(pred, dtype=torch.float32))
        logs = {"action_mae": float((pred - true).detach().abs().mean())}
        if cfg.pose_grip == "classify":  # frame t's grip: the command of the step that led to it (lag steps before)
            dims = list(cfg.gripper_dims)
            mid = (cfg.gripper_open + cfg.gripper_closed) / 2
            step = t - 1 - cfg.pose_grip_lag  # the labelled step; before the window: no label
            cmd = batch["actions"][rows, step.clamp_min(0)][:, dims]
            closed = (cmd < mid) if cfg.gripper_open > cfg.gripper_closed else (cmd > mid)
            valid = (step >= 0).float()[:, None].expand_as(cmd)
            logits = self.grip_head(h if cfg.pose_input == "pair" else h[b:])
            grip_loss = F.binary_cross_entropy_with_logits(logits.float(), closed.float(), weight=valid,
                                                           reduction="sum") / valid.sum().clamp_min(1.0)
            logs["grip_loss"] = float(grip_loss.detach())
            loss = loss + grip_loss
        return loss, {"loss": float(loss.detach()), **logs}

    @torch.no_grad()
    def _extract_pose(self, video: Tensor, proprio0: Tensor, seed: int, k: int) -> Extraction:
        """Pose target: K noisy copies of the video, joint positions read relative to frame 0 (pair: to the
        frame that starts each block of W), anchored at proprio0's; targets a_t = q_{t+1} + lead (q_{t+1} - q_t)."""
        cfg, a = self.config, self.config.action_dim
        t_len = video.shape[0]
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((k, *video.shape), generator=gen).to(self.device)
        vids = (video[None] + cfg.pose_noise * noise).clamp(0, 1) if cfg.pose_noise > 0 else video[None].expand(k, -1, -1, -1, -1)
        classify = cfg.pose_grip == "classify"  # (a test's reader may replace `read`)
        grip = None  # (K, T-1, G): P(closed) of the command before frames 1..T-1
        if cfg.pose_input == "frame":
            flat = vids.reshape(k * t_len, *video.shape[1:])
            reads = [self.read(c) for c in flat.split(cfg.max_batch)]
            q = torch.cat([r[0] for r in reads]).reshape(k, t_len, a)
            rel = q - q[:, :1]
            if classify:
                grip = torch.cat([r[1] for r in reads]).reshape(k, t_len, -1)[:, 1:]
        else:
            ts = torch.arange(1, t_len, device=self.device)
            ss = (ts - 1) // cfg.window * cfg.window  # each frame read against the start of its block
            fs, ft = vids[:, ss].reshape(-1, *video.shape[1:]), vids[:, ts].reshape(-1, *video.shape[1:])
            reads = [self.read(x, y) for x, y in zip(fs.split(cfg.max_batch), ft.split(cfg.max_batch))]
            d = torch.cat([r[0] for r in reads]).reshape(k, t_len - 1, a)
            if classify:
                grip = torch.cat([r[1] for r in reads]).reshape(k, t_len - 1, -1)
            rel = torch.zeros(k, t_len, a, device=self.device)
            for i, (s_i, t_i) in enumerate(zip(ss.tolist(), ts.tolist())):
                rel[:, t_i] = rel[:, s_i] + d[:, i]
        arm = torch.ones(a, dtype=torch.bool, device=self.device)
        arm[list(cfg.gripper_dims)] = False  # a grip opens or closes in a step: neither smoothed nor led
        if cfg.pose_smooth > 0 and t_len > 2:
            smooth = torch.einsum("st,kta->ksa", local_quadratic(t_len, cfg.pose_smooth).to(rel), rel)
            rel = torch.where(arm, smooth - smooth[:, :1], rel)  # still anchored: frame 0 is where the robot is
        q = proprio0[:a] + rel  # (K, T, A)
        acts = q[:, 1:] + self.lead * arm * (q[:, 1:] - q[:, :-1])  # (K, T-1, A)
        if grip is None:
            actions = snap_grippers(acts.mean(0).float().cpu(), cfg)
        else:  # the classified grips: closed where the draws' mean probability is above one half
            actions = acts.mean(0).float().cpu()
            closed = grip.mean(0).float().cpu() > 0.5  # (T-1, G): read at frames 1..T-1
            if cfg.pose_grip_lag:  # step j's command is read at frame j + 1 + lag (the last frame at the end)
                closed = closed[(torch.arange(t_len - 1) + cfg.pose_grip_lag).clamp_max(t_len - 2)]
            actions[:, list(cfg.gripper_dims)] = torch.where(closed, torch.tensor(cfg.gripper_closed),
                                                             torch.tensor(cfg.gripper_open))
        return Extraction(actions=actions, spread=acts.std(0, unbiased=False).mean(-1).float().cpu())

    def extract_joints(self, joints: Tensor, proprio0: Tensor) -> Extraction:
        """The actions of an imagined future that comes with its joint positions (a world model with
        `imagine_joints`): `joints (T, A)` in native units, frame 0's the measured ones it was given. As the pose
        target's extraction, read off the imagined joints instead of off the frames: smoothed in time as that
        reading (`pose_smooth`), anchored at `proprio0`'s positions, a_t = q_{t+1} + lead (q_{t+1} - q_t) for the
        arms (lead fitted by the pose target, else 0); a
        grip is commanded closed at step t when its finger's imagined position at frame t + 1 is below
        `joint_grip_closed_below` of its range, open otherwise. One reading: the spread is 0."""
        cfg, a = self.config, self.config.action_dim
        joints = torch.as_tensor(joints, dtype=torch.float32).cpu()
        if joints.ndim != 2 or joints.shape[1] != a or len(joints) < 2:
            raise PolicyError(f"imagined joints must be (T >= 2, {a}), got {tuple(joints.shape)}")
        q0 = torch.as_tensor(proprio0, dtype=torch.float32).reshape(-1)[:a].cpu()
        rel = joints - joints[:1]
        arm = torch.ones(a, dtype=torch.bool)
        arm[list(cfg.gripper_dims)] = False
        if cfg.pose_smooth > 0 and len(rel) > 2:  # as the frames' reading: sampled joints jitter frame to frame
            smooth = local_quadratic(len(rel), cfg.pose_smooth) @ rel
            rel = torch.where(arm, smooth - smooth[:1], rel)
        q = q0 + rel  # anchored: frame 0 is where the robot is
        lead = self.lead.float().cpu() if hasattr(self, "lead") else torch.zeros(a)
        actions = q[1:] + lead * arm * (q[1:] - q[:-1])  # (T-1, A); NaN stays NaN and is rejected by the planner
        if cfg.gripper_dims:
            dims = list(cfg.gripper_dims)
            lo, hi = cfg.gripper_closed, cfg.gripper_open
            closed = (q[1:, dims] - lo) / (hi - lo) < cfg.joint_grip_closed_below
            actions[:, dims] = torch.where(closed, torch.tensor(lo), torch.tensor(hi))
            actions[:, dims] = torch.where(torch.isfinite(q[1:, dims]), actions[:, dims], q[1:, dims])
        return Extraction(actions=actions, spread=torch.zeros(len(actions)))

    # -- training
    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Flow-matching loss: x_s = (1 - s) x0 + s eps, target velocity eps - x0 (diffusers convention);
        for the pose target, the pose regression loss (`_pose_loss`)."""
        cfg = self.config
        if self.pose:
            return self._pose_loss(batch)
        actions, proprio = batch["actions"], batch["proprio"]  # (B, W, A), (B, P)
        b, a = actions.shape[0], cfg.action_dim
        if self.training and cfg.proprio_noise > 0:  # later windows' joint positions are estimates
            proprio = proprio.clone()
            proprio[:, :a] += cfg.proprio_noise * torch.randn_like(proprio[:, :a])
        q0 = proprio[:, :a]
        pair = self.encode_pairs(batch["frame0"], batch["frame1"])  # (B, 2F)
        cond = self.condition(*pair.chunk(2, dim=-1), proprio)  # (B, d)
        x0 = self._to_x0(actions, batch.get("qpos"), q0)  # (B, W*D)
        eps = torch.randn_like(x0)
        sigma = torch.rand(b, device=x0.device)
        xs = (1 - sigma[:, None]) * x0 + sigma[:, None] * eps
        v = self.head(xs, sigma, cond)
        loss = F.mse_loss(v.float(), (eps - x0).float())
        # one-step estimate of x0, a readable training signal in native units
        x0_hat = self._from_x0((xs - sigma[:, None] * v).detach(), q0)[..., :a]
        mae = (x0_hat - actions).abs().mean()
        return loss, {"loss": float(loss.detach()), "action_mae": float(mae)}

    # -- sampling
    @torch.no_grad()
    def sample(self, cond: Tensor, noise: Tensor, q0: Tensor | None = None) -> Tensor:
        """Euler-integrate the flow from noise (B, W*D) to native units: actions (B, W, A) for the
        absolute target; [actions, qpos] (B, W, 2A) relative to q0 (B, A), made absolute, for delta."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if self.delta and q0 is None:
            raise PolicyError("the delta IDM samples relative to q0: pass the first joint positions (B, A)")
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        sched.set_timesteps(self.config.flow_steps, device=cond.device)
        x = noise
        for t in sched.timesteps:
            sigma = (t / sched.config.num_train_timesteps).expand(x.shape[0]).to(x.dtype)
            x = sched.step(self.head(x, sigma, cond), t, x).prev_sample
        return self._from_x0(x, q0)

    @torch.no_grad()
    def extract(
        self, video: Tensor, proprio0: Tensor, seed: int = 0, noise_samples: int | None = None
    ) -> Extraction:
        """Actions between consecutive frames of a whole video.

        video (T, 3, H, W) float in [0, 1], proprio0 (P,) at frame 0 -> Extraction(actions (T-1, A),
        spread (T-1,)). Windows start at 0..T-1-W (video padded with its last frame when T-1 < W);
        every window gets K noise draws, and all predictions covering a step are averaged.
        Absolute target: all windows x K go through the head as one batch (chunked by `max_batch`);
        `proprio_passes` > 1 re-runs it with later windows' proprio estimated from the previous pass's
        actions (see `window_proprio`). Delta target: windows run in order (K draws as one batch), each
        window's first joint positions being the mean of the positions the earlier windows predicted
        for that frame (frame 0: proprio0), its joint velocities their finite difference.
        Deterministic for a seed.
        """
        cfg = self.config
        if video.dim() != 4 or video.shape[1] != 3 or video.shape[0] < 2:
            raise PolicyError(f"extract needs video (T>=2, 3, H, W), got {tuple(video.shape)}")
        if proprio0.shape != (cfg.proprio_dim,):
            raise PolicyError(f"extract needs proprio0 ({cfg.proprio_dim},), got {tuple(proprio0.shape)}")
        k = noise_samples or cfg.noise_samples
        if self.pose:
            return self._extract_pose(video.to(self.device, torch.float32), proprio0.to(self.device, torch.float32), seed, k)
        n_actions = video.shape[0] - 1
        video = pad_video(video.to(self.device, torch.float32), cfg.window)
        n_pad = video.shape[0] - 1
        n = num_windows(n_pad, cfg.window)
        if cfg.fusion == "early":  # one backbone pass per window
            pair = torch.cat([self.encode_pairs(a, b) for a, b in zip(video[:n].split(cfg.max_batch),
                                                                     video[cfg.window : cfg.window + n].split(cfg.max_batch))])
            f0, f1 = pair.chunk(2, dim=-1)  # (N, F) each
        else:  # one backbone pass per frame, shared by the windows it starts or ends
            feats = torch.cat([self.encode_frames(c) for c in video.split(cfg.max_batch)])  # (T', F)
            f0, f1 = feats[:n], feats[cfg.window : cfg.window + n]  # (N, F) each
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(n * k, cfg.window * self.token_dim, generator=gen).to(self.device)
        proprio0 = proprio0.to(self.device, torch.float32)
        if self.delta:
            preds = self._extract_chained(f0, f1, noise, proprio0, n, k, n_pad)
            est, spread = average_windows(preds, n_pad)  # (T'-1, A), (T'-1,)
        else:
            est = None
            for _ in range(cfg.proprio_passes):
                proprio = window_proprio(proprio0, est, n, cfg.action_dim, cfg.control_dt)  # (N, P)
                cond = self.condition(f0, f1, proprio).repeat_interleave(k, dim=0)  # (N*K, d)
                preds = torch.cat(
                    [self.sample(c, z) for c, z in zip(cond.split(cfg.max_batch), noise.split(cfg.max_batch))]
                ).reshape(n, k, cfg.window, cfg.action_dim)  # (N, K, W, A)
                est, spread = average_windows(preds, n_pad)  # (T'-1, A), (T'-1,)
        actions = snap_grippers(est[:n_actions].float().cpu(), cfg)
        return Extraction(actions=actions, spread=spread[:n_actions].float().cpu())

    def _extract_chained(
        self, f0: Tensor, f1: Tensor, noise: Tensor, proprio0: Tensor, n: int, k: int, n_pad: int
    ) -> Tensor:
        """Delta target: windows in order, each starting from the joint positions predicted for its
        first frame by the windows before it. Returns the action predictions (N, K, W, A)."""
        cfg, a, w = self.config, self.config.action_dim, self.config.window
        q_sum = torch.zeros(n_pad + 1, a, device=self.device)
        q_cnt = torch.zeros(n_pad + 1, device=self.device)
        q_sum[0], q_cnt[0] = proprio0[:a], 1.0
        q_prev = proprio0[:a]
        out = torch.empty(n, k, w, a, device=self.device)
        for i in range(n):
            q_i = proprio0[:a] if i == 0 else q_sum[i] / q_cnt[i]  # frame i is covered by window i-1
            proprio = proprio0.clone()
            proprio[:a] = q_i
            if i > 0 and proprio.shape[0] >= 2 * a:
                proprio[a : 2 * a] = (q_i - q_prev) / cfg.control_dt
            q_prev = q_i
            cond = self.condition(f0[i : i + 1], f1[i : i + 1], proprio[None]).expand(k, -1)  # (K, d)
            pred = self.sample(cond, noise[i * k : (i + 1) * k], q_i.expand(k, a))  # (K, W, 2A)
            out[i] = pred[..., :a]
            q_sum[i + 1 : i + 1 + w] += pred[..., a:].mean(0)
            q_cnt[i + 1 : i + 1 + w] += 1.0
        return out

    # -- checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write model.safetensors + config.json + manifest.json (sha256 and size of both)."""
        hf = getattr(self.backbone, "hf_config", None)
        meta = {"format": CHECKPOINT_FORMAT, "config": asdict(self.config), "backbone_hf_config": hf}
        save_checkpoint(directory, self.state_dict(), json.loads(json.dumps(meta, default=str)))
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> InverseDynamicsModel:
        """Load a checkpoint written by `save_pretrained`; missing/corrupt/truncated -> CheckpointError."""
        tensors, meta = load_checkpoint(directory)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{directory} is not an IDM checkpoint (format {meta.get('format')!r})")
        try:
            model = cls(IDMConfig(**meta["config"]), backbone_hf_config=meta.get("backbone_hf_config"))
            model.load_state_dict(_legacy_small_cnn_keys(tensors), strict=True)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"IDM checkpoint {directory} does not fit its config: {e}") from e
        return model.to(map_location).eval()
