"""Action-sequence metrics: DTW (dtaidistance's C implementation, multivariate) and per-joint MSE.

Joints live in different units and ranges (arm joints in radians, grippers in their ctrlrange), so
DTW first divides every joint by its range (`high - low`): a DTW of 0.1 means about a tenth of a joint
range of accumulated mismatch. dtaidistance's multivariate DTW sums squared Euclidean distances along
the best warping path and returns the square root; `reference_dtw` is the plain O(N*M) version.
`evaluate_idm` compares the IDM's extraction from real frames against the true actions, next to the
trivial baseline of repeating the last known command (holding the joint positions of frame 0).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def normalise_joints(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(T, A) native units -> (T, A) float64 divided by each joint's range (offset by `low`)."""
    rng = np.maximum(np.asarray(high, np.float64) - np.asarray(low, np.float64), 1e-9)
    return (np.asarray(actions, np.float64) - np.asarray(low, np.float64)) / rng


def dtw_distance(
    true: np.ndarray, pred: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None
) -> float:
    """Multivariate DTW between (T, A) and (T', A) action sequences, per-joint-range normalised.

    Without `low`/`high` the sequences are compared as given.
    """
    from dtaidistance import dtw_ndim

    a, b = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"dtw_distance needs (T, A) and (T', A), got {a.shape} and {b.shape}")
    if low is not None and high is not None:
        a, b = normalise_joints(a, low, high), normalise_joints(b, low, high)
    return float(dtw_ndim.distance_fast(np.ascontiguousarray(a), np.ascontiguousarray(b)))


def reference_dtw(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Plain-Python DTW: cumulative squared Euclidean cost over the best path, then the square root."""
    n, m = len(a), len(b)
    inf = float("inf")
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d = sum((x - y) ** 2 for x, y in zip(a[i - 1], b[j - 1]))
            cost[i][j] = d + min(cost[i - 1][j], cost[i][j - 1], cost[i - 1][j - 1])
    return cost[n][m] ** 0.5


def per_joint_mse(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Mean squared error per joint over time, native units: (T, A), (T, A) -> (A,)."""
    a, b = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"per_joint_mse needs equal shapes, got {a.shape} and {b.shape}")
    return ((a - b) ** 2).mean(axis=0)


def hold_baseline(proprio0: np.ndarray, n_steps: int, action_dim: int) -> np.ndarray:
    """Repeat the last known command: the joint positions at frame 0 for every step -> (T, A)."""
    return np.repeat(np.asarray(proprio0, np.float64)[None, :action_dim], n_steps, axis=0)


def evaluate_idm(
    model: Any,
    episodes: Sequence[dict[str, Any]],
    low: np.ndarray | None = None,
    high: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """DTW and MSE of IDM extraction from each episode's real frames vs its true actions, and of the
    repeat-last-command baseline. Episodes: frames uint8 (T+1, H, W, 3), proprio (T+1, P), actions (T, A).
    `low`/`high` default to the robot's ACTION_LOW/ACTION_HIGH. Returns means over episodes, per-joint
    MSE, and the ratios IDM / baseline (below 1 is better than the baseline).
    """
    import torch

    from policies.idm.processor_idm import to_float_frames

    if low is None or high is None:
        from envs.robot import ACTION_HIGH, ACTION_LOW

        low, high = ACTION_LOW, ACTION_HIGH
    dtw_idm, dtw_base, mse_idm, mse_base, spread = [], [], [], [], []
    for k, e in enumerate(episodes):
        true = np.asarray(e["actions"], np.float64)  # (T, A)
        video = to_float_frames(torch.as_tensor(np.asarray(e["frames"])))  # (T+1, 3, H, W)
        proprio0 = torch.as_tensor(np.asarray(e["proprio"])[0], dtype=torch.float32)
        ext = model.extract(video, proprio0, seed=seed + k)
        pred = ext.actions.numpy().astype(np.float64)
        base = hold_baseline(proprio0.numpy(), true.shape[0], true.shape[1])
        dtw_idm.append(dtw_distance(true, pred, low, high))
        dtw_base.append(dtw_distance(true, base, low, high))
        mse_idm.append(per_joint_mse(true, pred))
        mse_base.append(per_joint_mse(true, base))
        spread.append(float(ext.spread.mean()))
    if not dtw_idm:
        raise ValueError("evaluate_idm got no episodes")
    out = {
        "episodes": len(dtw_idm),
        "dtw_idm": float(np.mean(dtw_idm)),
        "dtw_baseline": float(np.mean(dtw_base)),
        "mse_idm": float(np.mean(mse_idm)),
        "mse_baseline": float(np.mean(mse_base)),
        "mse_per_joint_idm": np.mean(mse_idm, axis=0).tolist(),
        "mse_per_joint_baseline": np.mean(mse_base, axis=0).tolist(),
        "spread_mean": float(np.mean(spread)),
    }
    out["dtw_ratio"] = out["dtw_idm"] / max(out["dtw_baseline"], 1e-12)
    out["mse_ratio"] = out["mse_idm"] / max(out["mse_baseline"], 1e-12)
    return out
