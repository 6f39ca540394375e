"""Pre/post-processing of the IDM: video padding, window layout, test-time averaging, proprio estimates.

Everything here is a pure tensor function so the extraction arithmetic can be tested on constructed
cases without a model.
"""
from __future__ import annotations

import torch
from torch import Tensor


def pad_video(video: Tensor, window: int) -> Tensor:
    """Make a video long enough for one window: (T, C, H, W) -> (max(T, window + 1), C, H, W).

    Rule: when T - 1 < window the last frame is repeated (the scene is assumed to hold still after
    the last observed frame); the extra actions this implies are cropped after averaging.
    """
    missing = window + 1 - video.shape[0]
    if missing <= 0:
        return video
    return torch.cat([video, video[-1:].expand(missing, *video.shape[1:])], dim=0)


def num_windows(n_actions: int, window: int) -> int:
    """Windows start at 0 .. n_actions - window, one step apart (at least one, after padding)."""
    return max(n_actions - window + 1, 1)


def average_windows(preds: Tensor, n_actions: int) -> tuple[Tensor, Tensor]:
    """Average K noise draws and the overlapping windows into one trajectory.

    preds: (N, K, W, A) with window n predicting actions n .. n + W - 1 (steps >= n_actions dropped).
    Returns mean (n_actions, A): every prediction that covers a step, averaged (each step is covered by
    up to W windows x K draws); spread (n_actions,): the std across the K draws of each covering window,
    averaged over those windows and over the A joints.
    """
    n, _k, w, a = preds.shape
    steps = torch.arange(n, device=preds.device)[:, None] + torch.arange(w, device=preds.device)[None, :]
    valid = steps < n_actions  # (N, W)
    idx = steps[valid]  # (M,)
    draw_mean = preds.mean(dim=1)[valid]  # (M, A)
    draw_std = preds.std(dim=1, unbiased=False).mean(dim=-1)[valid]  # (M,)
    total = torch.zeros(n_actions, a, dtype=preds.dtype, device=preds.device).index_add_(0, idx, draw_mean)
    spread = torch.zeros(n_actions, dtype=preds.dtype, device=preds.device).index_add_(0, idx, draw_std)
    count = torch.zeros(n_actions, dtype=preds.dtype, device=preds.device).index_add_(
        0, idx, torch.ones_like(draw_std)
    )
    if bool((count == 0).any()):
        raise ValueError("average_windows: some steps are covered by no window")
    return total / count[:, None], spread / count


def window_proprio(proprio0: Tensor, actions: Tensor | None, n: int, action_dim: int, dt: float) -> Tensor:
    """Proprio at the first frame of each of n windows: (n, P).

    Only proprio0 is known for an imagined video. Window 0 gets proprio0 exactly. With no action
    estimate yet (`actions` None, the first extraction pass) every window gets proprio0. Otherwise the
    joint-position targets are taken as the joint-position estimate: qpos at frame s = actions[s - 1],
    and qvel = (qpos[s] - qpos[s - 1]) / dt, with qpos[0] from proprio0. Dimensions beyond
    [qpos (A), qvel (A)] keep proprio0's values.
    """
    out = proprio0[None].repeat(n, 1)  # (n, P)
    if actions is None or n == 1:
        return out
    qpos = torch.cat([proprio0[None, :action_dim], actions[: n - 1]], dim=0)  # (n, A) for frames 0..n-1
    out[1:, :action_dim] = qpos[1:]
    if proprio0.shape[0] >= 2 * action_dim:
        out[1:, action_dim : 2 * action_dim] = (qpos[1:] - qpos[:-1]) / dt
    return out


def to_float_frames(frames: Tensor) -> Tensor:
    """uint8 (..., H, W, 3) env frames -> float (..., 3, H, W) in [0, 1]."""
    return frames.movedim(-1, -3).float() / 255.0
