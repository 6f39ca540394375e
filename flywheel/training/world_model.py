"""Multi-stage training of the world model over any torch Dataset / iterable of clip dicts.

A clip dict: `video (T, 3, H, W)` float in [0, 1], `caption` str, optional `actions (T-1, 16)` and
`success` (float, NaN or missing when unknown). A recipe is a list of `Stage`s (the seeds' play ->
broad task data -> the robot's own rollouts), each with its own data, steps and learning rate; the
optimizer carries over between stages. Checkpoints are resumable bit for bit on the same device:
data order is a function of (seed, stage, epoch) and the RNG state is saved.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from flywheel.config import TrainConfig
from flywheel.training.common import (
    autocast,
    cycle,
    load_training_checkpoint,
    make_grad_scaler,
    progress_bar,
    resolve_device,
    save_training_checkpoint,
)
from policies.errors import CheckpointError

WARMUP_STEPS = 50  # linear lr warm-up over the first steps of a run (at most a tenth of it)


@dataclass
class Stage:
    """One stage of a recipe: its data (Dataset or iterable of clip dicts), step budget and lr."""

    name: str
    data: Dataset | Iterable
    steps: int
    lr: float


@dataclass
class TrainResult:
    """What a run did: steps, losses, where the final model and the resumable checkpoint are."""

    steps: int
    final_loss: float
    model_dir: str
    model_sha256: str
    checkpoint_dir: str
    clips_per_s: float
    wall_s: float
    history: list[dict] = field(default_factory=list)


def collate_clips(items: list[dict]) -> dict:
    """Stack clip dicts into a batch: video (B, T, 3, H, W), caption list, actions (B, T-1, A) or None
    (unless every clip has them), success (B,) with NaN where unknown."""
    actions = [it.get("actions") for it in items]
    success = [it.get("success") for it in items]
    return {
        "video": torch.stack([torch.as_tensor(it["video"], dtype=torch.float32) for it in items]),
        "caption": [str(it.get("caption", "")) for it in items],
        "actions": None if any(a is None for a in actions)
        else torch.stack([torch.as_tensor(a, dtype=torch.float32) for a in actions]),
        "success": torch.tensor([math.nan if s is None else float(s) for s in success], dtype=torch.float32),
        **({"episode_success": torch.tensor([bool(it["episode_success"]) for it in items])}
           if all("episode_success" in it for it in items) else {}),
        **({"start_pose": torch.stack([torch.as_tensor(it["start_pose"], dtype=torch.float32) for it in items])}
           if all("start_pose" in it for it in items) else {}),
        **({"poses": torch.stack([torch.as_tensor(it["poses"], dtype=torch.float32) for it in items])}
           if all("poses" in it for it in items) else {}),
        **({"goal": torch.stack([torch.as_tensor(it["goal"], dtype=torch.float32) for it in items])}
           if all("goal" in it for it in items) else {}),
    }


def _batches(data: Dataset | Iterable, batch_size: int, seed: int, stage_idx: int, start: int,
             num_workers: int) -> Iterator[dict]:
    """Endless batches. Map-style data: a seeded permutation per epoch (resumable at batch `start`);
    iterables are re-iterated from the beginning."""
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        chunk: list[dict] = []
        for item in cycle(data):
            chunk.append(item)
            if len(chunk) == batch_size:
                yield collate_clips(chunk)
                chunk = []
        return
    n = len(data)
    if n == 0:
        raise ValueError(f"stage {stage_idx} has an empty dataset")
    bs = min(batch_size, n)
    per_epoch = n // bs

    def index_batches(begin: int) -> Iterator[list[int]]:
        epoch, offset = divmod(begin, per_epoch)
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + stage_idx * 10_007 + epoch)
            perm = torch.randperm(n, generator=g).tolist()
            for b in range(offset, per_epoch):
                yield perm[b * bs:(b + 1) * bs]
            epoch, offset = epoch + 1, 0

    yield from DataLoader(data, batch_sampler=index_batches(start), collate_fn=collate_clips,
                          num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    # (a private generator: the DataLoader must not draw from the global RNG, or resume would drift)


def _as_stages(data, cfg: TrainConfig) -> list[Stage]:
    if isinstance(data, (list, tuple)) and data and all(isinstance(s, (Stage, tuple)) for s in data) \
            and all(isinstance(s, Stage) or (len(s) == 4 and isinstance(s[0], str)) for s in data):
        return [s if isinstance(s, Stage) else Stage(*s) for s in data]
    return [Stage("train", data, sum(s.steps for s in cfg.wm_stages), cfg.wm_stages[0].lr)]


def _ema_tensors(ema: list[torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if ema is None else {f"ema{i}": t for i, t in enumerate(ema)}


def train_world_model(model: torch.nn.Module, data, cfg: TrainConfig, out_dir: str | Path,
                      resume_from: str | Path | None = None, progress: bool = True,
                      checkpoint_every: int | None = None) -> TrainResult:
    """Train `model` (forward(batch) -> (loss, logs), save_pretrained) through the stages of `data`:
    a list of `Stage` / (name, data, steps, lr), or one dataset trained for the total steps of
    `cfg.wm_stages` at the first stage's lr. Writes `out_dir/checkpoint` (resumable, every
    `checkpoint_every` steps and at the end) and `out_dir/model` (the final model)."""
    stages = _as_stages(data, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stages[0].lr, weight_decay=0.0, foreach=True)
    scaler = make_grad_scaler(device, cfg.precision)
    step, history = 0, []
    # the weight average (train.wm_ema_decay): one copy of every trained tensor, saved with the checkpoint
    ema = [p.detach().clone() for p in params] if cfg.wm_ema_decay else None
    if resume_from is not None:
        saved: dict[str, torch.Tensor] = {}
        step = int(load_training_checkpoint(resume_from, model, optimizer, extra=saved)["step"])
        history = []
        if ema is not None:
            if len([k for k in saved if k.startswith("ema")]) != len(ema):
                raise CheckpointError(f"training checkpoint {resume_from} has no weight average for "
                                      "train.wm_ema_decay > 0 (it was written without one)")
            ema = [saved[f"ema{i}"].to(p.device, p.dtype) for i, p in enumerate(params)]
    else:
        torch.manual_seed(cfg.seed)
    total = sum(s.steps for s in stages)
    warmup = max(1, min(WARMUP_STEPS, total // 10))  # a function of the step: resume stays exact
    bar = progress_bar(total, progress, "world model", initial=min(step, total))
    clips, loss_value, t_start = 0, float("nan"), time.perf_counter()
    window: list[dict] = []
    begin = 0
    for si, stage in enumerate(stages):
        end = begin + stage.steps
        if step >= end:
            begin = end
            continue
        batches = _batches(stage.data, cfg.batch_size, cfg.seed, si, step - begin, cfg.num_workers)
        while step < end:
            for group in optimizer.param_groups:  # linear warm-up at the start of a run, then the stage's lr
                group["lr"] = stage.lr * min(1.0, (step + 1) / warmup)
            batch = next(batches)
            with autocast(device, cfg.precision):
                loss, logs = model(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params],
                                         1.0 - min(cfg.wm_ema_decay, (1 + step) / (10 + step)))
            step += 1
            clips += batch["video"].shape[0]
            loss_value = float(logs.get("loss", loss.item()))
            window.append(logs)
            bar.set_postfix(stage=stage.name, loss=f"{loss_value:.4f}")
            bar.update()
            if step % cfg.log_every == 0 or step == end:
                history.append({"step": step, "stage": stage.name, **{
                    k: sum(w[k] for w in window if k in w) / max(1, sum(k in w for w in window))
                    for k in {k for w in window for k in w}}})
                window = []
            if checkpoint_every and step % checkpoint_every == 0 and step < total:
                save_training_checkpoint(out / "checkpoint", model, optimizer, {"step": step}, _ema_tensors(ema))
        begin = end
    bar.close()
    wall = time.perf_counter() - t_start
    save_training_checkpoint(out / "checkpoint", model, optimizer, {"step": step}, _ema_tensors(ema))
    if ema is not None:  # the model that is saved (and left in memory) is the average
        with torch.no_grad():
            torch._foreach_copy_(params, ema)
    model.eval()
    sha = model.save_pretrained(out / "model")
    return TrainResult(steps=step, final_loss=loss_value, model_dir=str(out / "model"), model_sha256=sha,
                       checkpoint_dir=str(out / "checkpoint"), clips_per_s=clips / max(wall, 1e-9),
                       wall_s=wall, history=history)
