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


MOVING = 0.1  # a pixel moves if some channel differs from the last given frame by more than this
NEAR = 8  # static pixels within this many pixels of a moving one are "near" (where a blurred arm spills)


def error_regions(pred: torch.Tensor, future: torch.Tensor, last: torch.Tensor) -> dict[str, tuple[float, int]]:
    """Squared error summed over pixels (channel-mean) and pixel counts in three regions of the real future
    `(T, 3, H, W)`: `moving` (differs from the `last` given frame `(3, H, W)` by more than MOVING), `near`
    (static, within NEAR pixels of a moving one) and `far` (the rest). Copying the last frame is almost exact
    on `near` and `far`: what a model loses there it loses by drawing where nothing changed."""
    moving = ((future - last).abs().amax(1, keepdim=True) > MOVING).float()  # (T, 1, H, W)
    around = F.max_pool2d(moving, 2 * NEAR + 1, 1, NEAR) > 0
    err = ((pred.float() - future.float()) ** 2).mean(1, keepdim=True)
    masks = {"moving": moving > 0, "near": around & (moving == 0), "far": ~around}
    return {k: (float(err[m].sum()), int(m.sum())) for k, m in masks.items()}


@torch.no_grad()
def evaluate_world_model(model, clips: Iterable[dict], steps: int | None = None, seed: int = 0,
                         imagine: bool = False, guidance: float = 1.0, imagine_steps: int = 8) -> dict[str, float]:
    """Evaluation-mode metrics over held-out clips (dicts with video (T, 3, H, W), actions (T-1, A),
    caption, success), with `steps` sampling steps (None: the model's `predict_steps`). The model is given
    its `cond_frames` first frames (K); the frames after them are scored, against the baseline of copying
    the last given frame forward. AUROC uses the success head on the real final frames of labelled clips.
    With `imagine`, also imagine mode (caption and start frames, no actions; `guidance` on text,
    `imagine_steps` steps) as `psnr_imagine` / `ssim_imagine`, on the same frames.
    `mse_<region>` / `mse_copy_<region>` (see `error_regions`) and `frac_<region>` say where the error is.
    A clip whose future is its last given frame, unchanged (a robot holding still), has no PSNR against copying
    (infinite): it is left out of the PSNR / SSIM figures and counted in `n_static_clips`, with the model's
    mean squared error there (motion it invents where nothing moves) as `mse_static`."""
    psnrs, ssims, base_psnrs, base_ssims, scores, labels = [], [], [], [], [], []
    static_mse: list[float] = []
    regions = {k: [0.0, 0.0, 0] for k in ("moving", "near", "far")}  # model SE, copying SE, pixels
    ipsnrs, issims = [], []
    k = int(getattr(getattr(model, "cfg", None), "cond_frames", 1))
    for i, clip in enumerate(clips):
        video = torch.as_tensor(clip["video"], dtype=torch.float32)  # (T, 3, H, W)
        caption = str(clip.get("caption", ""))
        if clip.get("actions") is not None:
            start = video[0] if k == 1 else video[:k]
            pose = clip.get("start_pose")  # a world model with joint channels starts from the measured joints
            pred, _ = model.predict(start, clip["actions"], caption, seed=seed + i, steps=steps, pose=pose)
            future, copy = video[k:], video[k - 1:k].expand_as(video[k:])
            if torch.equal(copy, future):
                static_mse.append(F.mse_loss(pred[k:].float(), future).item())
            else:
                psnrs.append(psnr(pred[k:], future))
                ssims.append(ssim(pred[k:], future))
                base_psnrs.append(psnr(copy, future))
                base_ssims.append(ssim(copy, future))
                ours, theirs = error_regions(pred[k:], future, video[k - 1]), error_regions(copy, future, video[k - 1])
                for name, acc in regions.items():
                    acc[0] += ours[name][0]
                    acc[1] += theirs[name][0]
                    acc[2] += ours[name][1]
                if imagine:
                    imag = model.imagine(start, caption, n=1, steps=imagine_steps, guidance=guidance, seed=seed + i,
                                         num_frames=len(video), pose=pose)[0]
                    ipsnrs.append(psnr(imag[k:], future))
                    issims.append(ssim(imag[k:], future))
        s = clip.get("success")
        if s is not None and not math.isnan(float(s)) and getattr(model, "success_head", None) is not None:
            scores.append(model.success_prob(video, caption))
            labels.append(float(s))

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    gains = [a - b for a, b in zip(psnrs, base_psnrs)]
    # standard error of the mean per-clip gain over copying: "clearly above copying" is gain > 2 SE
    gain_se = (sum((g - mean(gains)) ** 2 for g in gains) / (len(gains) - 1) / len(gains)) ** 0.5 \
        if len(gains) > 1 else float("nan")

    return {
        "psnr": mean(psnrs), "ssim": mean(ssims), "psnr_copy_last": mean(base_psnrs),
        "ssim_copy_last": mean(base_ssims), "psnr_gain_se": gain_se, "success_auroc": auroc(scores, labels),
        "n_clips": float(len(psnrs)), "n_labelled": float(len(labels)),
        "n_static_clips": float(len(static_mse)), "mse_static": mean(static_mse),
        **{f"mse_{k}": a[0] / a[2] if a[2] else float("nan") for k, a in regions.items()},
        **{f"mse_copy_{k}": a[1] / a[2] if a[2] else float("nan") for k, a in regions.items()},
        **{f"frac_{k}": a[2] / max(1, sum(b[2] for b in regions.values())) for k, a in regions.items()},
        **({"psnr_imagine": mean(ipsnrs), "ssim_imagine": mean(issims)} if imagine else {}),
    }
