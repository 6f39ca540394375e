"""Training of the inverse dynamics model on stored episodes (all of them: play, expert, failures).

`WindowDataset` cuts in-memory episodes (what the store reader yields) into (frame s, frame s+W,
proprio s, actions s..s+W-1) windows; `train_idm` runs flow-matching training with AMP/device from the
`TrainConfig`, a tqdm progress bar, and resumable checkpoints, all through `flywheel.training.common`
(safetensors + JSON, no pickle).
Batches are drawn per step from a generator seeded by (seed, step), so a resumed run sees exactly the
batches and noise an uninterrupted run would have.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from flywheel.config import TrainConfig
from flywheel.training.common import (
    autocast,
    load_training_checkpoint,
    make_grad_scaler,
    progress_bar,
    resolve_device,
    save_training_checkpoint,
)
from policies.idm import InverseDynamicsModel
from policies.idm.processor_idm import to_float_frames


class WindowDataset(Dataset):
    """Training windows of W steps from episodes.

    Each episode dict holds frames uint8 (T+1, H, W, 3), proprio float (T+1, P), actions float (T, A).
    Item i: frame0/frame1 float (3, H, W) in [0, 1] W steps apart, proprio (P,) at frame0, actions
    (W, A) between them and qpos (W, A): the joint positions at frames 1..W (the first A proprio dims,
    which the delta target predicts); with `all_frames`, also frames (W+1, H, W, 3) uint8: every frame of
    the window, unconverted (the pose target reads any pair of them and converts only those). Episodes
    shorter than W are padded like extraction pads video: the last frame, proprio and action repeat (the
    robot holds still).
    """

    def __init__(self, episodes: Sequence[dict[str, Any]], window: int, all_frames: bool = False) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.all_frames = window, all_frames
        self.episodes: list[dict[str, Tensor]] = []
        self.index: list[tuple[int, int]] = []  # (episode, start)
        for e in episodes:
            frames = torch.as_tensor(np.asarray(e["frames"]))
            proprio = torch.as_tensor(np.asarray(e["proprio"]), dtype=torch.float32)
            actions = torch.as_tensor(np.asarray(e["actions"]), dtype=torch.float32)
            t = actions.shape[0]
            if t < 1 or frames.shape[0] != t + 1 or proprio.shape[0] != t + 1:
                raise ValueError(
                    f"episode needs frames (T+1,..), proprio (T+1, P), actions (T, A) with T >= 1; got "
                    f"{tuple(frames.shape)}, {tuple(proprio.shape)}, {tuple(actions.shape)}"
                )
            if t < window:
                pad = window - t
                frames = torch.cat([frames, frames[-1:].expand(pad, *frames.shape[1:])])
                actions = torch.cat([actions, actions[-1:].expand(pad, -1)])
                proprio = torch.cat([proprio, proprio[-1:].expand(pad, -1)])
            k = len(self.episodes)
            self.episodes.append({"frames": frames, "proprio": proprio, "actions": actions, "t": t})
            self.index += [(k, s) for s in range(actions.shape[0] - window + 1)]
        if not self.index:
            raise ValueError("WindowDataset got no episodes")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        k, s = self.index[i]
        e, w = self.episodes[k], self.window
        # every frame of the window, as the env's uint8 (W+1, H, W, 3): the pose loss converts the pair it reads
        extra = {"frames": e["frames"][s : s + w + 1]} if self.all_frames else {}
        return extra | {
            "frame0": to_float_frames(e["frames"][s]),  # (3, H, W)
            "frame1": to_float_frames(e["frames"][s + w]),  # (3, H, W)
            "proprio": e["proprio"][s],  # (P,)
            "actions": e["actions"][s : s + w],  # (W, A)
            "qpos": e["proprio"][s + 1 : s + w + 1, : e["actions"].shape[1]],  # (W, A)
        }

    def deltas(self) -> Tensor:
        """Every window's [actions - q0, qpos - q0] (N, W, 2A), q0 the joint positions at its first frame:
        the delta target's normalisation data."""
        out = []
        for e in self.episodes:
            a = e["actions"].shape[1]
            q = e["proprio"][:, :a]  # (T'+1, A)
            starts = torch.arange(e["actions"].shape[0] - self.window + 1)
            steps = starts[:, None] + torch.arange(self.window)[None]  # (n, W)
            q0 = q[starts][:, None]  # (n, 1, A)
            out.append(torch.cat([e["actions"][steps] - q0, q[steps + 1] - q0], dim=-1))
        return torch.cat(out)

    def stats(self) -> tuple[Tensor, Tensor]:
        """All real (unpadded) actions (N, A) and proprio (M, P), for `fit_normalization`."""
        actions = torch.cat([e["actions"][: e["t"]] for e in self.episodes])
        proprio = torch.cat([e["proprio"][: e["t"] + 1] for e in self.episodes])
        return actions, proprio


class _StepBatches(Sampler[list[int]]):
    """Batch indices for steps start..stop-1, each drawn from a generator seeded by (seed, step)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield torch.randint(self.n, (self.batch_size,), generator=g).tolist()


@dataclass
class TrainResult:
    """What `train_idm` did: the final step, the loss per step of this call, and the checkpoint dir."""

    step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None


def cosine_factor(step: int, steps: int, floor: float) -> float:
    """The learning-rate factor of a cosine schedule at `step` of `steps`: 1 at the first, `floor` at the last."""
    frac = step / max(steps - 1, 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def train_idm(
    model: InverseDynamicsModel,
    dataset: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    steps: int,
    lr: float,
    resume_from: str | Path | None = None,
    progress: bool = True,
    save_every: int | None = None,
) -> TrainResult:
    """Train `model` until `steps` total optimizer steps, checkpointing to `out_dir`.

    Normalisation stats are fitted from `dataset.stats()` unless the model already has them (a fine-
    tune keeps its stats). `resume_from` is a checkpoint directory written by an earlier call (its
    `out_dir`): weights (stats included), optimizer state and the step count are restored and training
    continues to `steps`. The model's own checkpoint is `out_dir/model` (`from_pretrained` reads it).
    """
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    if resume_from is None and not bool(model.stats_fitted) and hasattr(dataset, "stats"):
        deltas = dataset.deltas() if getattr(model, "needs_deltas", False) and hasattr(dataset, "deltas") else None
        model.fit_normalization(*dataset.stats(), deltas=deltas)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, foreach=True)  # ~15% faster steps on CPU
    start = 0
    if resume_from is not None:
        start = int(load_training_checkpoint(resume_from, model, opt)["step"])
        for group in opt.param_groups:
            group["lr"] = lr
    scaler = make_grad_scaler(device, cfg.precision)
    batches = _StepBatches(len(dataset), cfg.idm_batch_size or cfg.batch_size, cfg.seed, start, steps)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers)
    save_every = save_every or max(steps // 4, 1)
    result = TrainResult(step=start)
    bar = progress_bar(steps, progress, "train idm", initial=start)
    for step, batch in zip(range(start, steps), loader):
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # flow noise and times: the same on resume
        if cfg.idm_lr_schedule == "cosine":  # a function of the step alone: the same on resume
            for group in opt.param_groups:
                group["lr"] = lr * cosine_factor(step, steps, cfg.idm_lr_min)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, cfg.precision):
            loss, logs = model(batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        result.losses.append(logs["loss"])
        result.step = step + 1
        bar.update(1)
        if result.step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{logs['loss']:.4f}", mae=f"{logs['action_mae']:.4f}")
        if result.step % save_every == 0 or result.step == steps:
            state = {"step": result.step, "kind": "idm", "lr": lr, "last_loss": logs["loss"]}
            result.checkpoint = save_training_checkpoint(out, model, opt, state)
    bar.close()
    model.eval()
    return result
