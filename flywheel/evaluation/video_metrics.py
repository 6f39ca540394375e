"""Held-out metrics of the world model: PSNR and SSIM of predicted vs real future frames (evaluation
mode, true actions), against the copy-the-last-frame-forward baseline, and success-head AUROC."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (any matching shapes, averaged MSE)."""
    mse = F.mse_loss(pred.float(), target.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, k, k)


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11) -> float:
    """Mean structural similarity (Gaussian window, per channel) of images `(..., C, H, W)` in [0, 1]."""
    x = pred.float().reshape(-1, 1, *pred.shape[-2:])  # (N*C, 1, H, W)
    y = target.float().reshape(-1, 1, *target.shape[-2:])
    k = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(k, 1.5 * k / 11)
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def auroc(scores: Iterable[float], labels: Iterable[float]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN if one class is absent."""
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    y = torch.as_tensor(list(labels), dtype=torch.float64) > 0.5
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


@torch.no_grad()
def evaluate_world_model(model, clips: Iterable[dict], steps: int = 8, seed: int = 0,
                         imagine: bool = False, guidance: float = 1.0) -> dict[str, float]:
    """Evaluation-mode metrics over held-out clips (dicts with video (T, 3, H, W), actions (T-1, A),
    caption, success). The model is given its `cond_frames` first frames (K); the frames after them are
    scored, against the baseline of copying the last given frame forward. AUROC uses the success head on
    the real final frames of labelled clips. With `imagine`, also imagine mode (caption and start frames,
    no actions; `guidance` on text) as `psnr_imagine` / `ssim_imagine`, on the same frames."""
    psnrs, ssims, base_psnrs, base_ssims, scores, labels = [], [], [], [], [], []
    ipsnrs, issims = [], []
    k = int(getattr(getattr(model, "cfg", None), "cond_frames", 1))
    for i, clip in enumerate(clips):
        video = torch.as_tensor(clip["video"], dtype=torch.float32)  # (T, 3, H, W)
        caption = str(clip.get("caption", ""))
        if clip.get("actions") is not None:
            start = video[0] if k == 1 else video[:k]
            pred, _ = model.predict(start, clip["actions"], caption, seed=seed + i, steps=steps)
            future, copy = video[k:], video[k - 1:k].expand_as(video[k:])
            psnrs.append(psnr(pred[k:], future))
            ssims.append(ssim(pred[k:], future))
            base_psnrs.append(psnr(copy, future))
            base_ssims.append(ssim(copy, future))
            if imagine:
                imag = model.imagine(start, caption, n=1, steps=steps, guidance=guidance, seed=seed + i,
                                     num_frames=len(video))[0]
                ipsnrs.append(psnr(imag[k:], future))
                issims.append(ssim(imag[k:], future))
        s = clip.get("success")
        if s is not None and not math.isnan(float(s)) and getattr(model, "success_head", None) is not None:
            scores.append(model.success_prob(video, caption))
            labels.append(float(s))

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    return {
        "psnr": mean(psnrs), "ssim": mean(ssims), "psnr_copy_last": mean(base_psnrs),
        "ssim_copy_last": mean(base_ssims), "success_auroc": auroc(scores, labels),
        "n_clips": float(len(psnrs)), "n_labelled": float(len(labels)),
        **({"psnr_imagine": mean(ipsnrs), "ssim_imagine": mean(issims)} if imagine else {}),
    }
