"""World-model training throughput: `train_world_model` over an in-memory dataset vs a bare torch loop
over the same model and one batch held in memory. Target: ratio >= 0.9 (the data path must not starve
the model). The demo preset's world model (configs/world_model/tiny.yaml: 9 frames at 64x64, the action map
and MLP), batch 8. Prints one JSON object.

    .venv/bin/python bench/bench_wm_train.py [--threads N] [--steps S]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from flywheel.config import TrainConfig
from flywheel.training.world_model import Stage, collate_clips, train_world_model
from policies.world_model import WorldModel, WorldModelConfig


def make_clips(cfg: WorldModelConfig, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    s, t = cfg.image_size, cfg.num_frames
    return [{"video": torch.rand(t, 3, s, s, generator=g), "caption": f"pick the cube {i}",
             "actions": torch.randn(t - 1, 16, generator=g), "success": float(i % 2)} for i in range(n)]


def timed_steps(model: torch.nn.Module, batch: dict, steps: int, grad_clip: float, weight_decay: float = 0.0) -> float:
    """Seconds of `steps` of the plainest loop (forward, backward, clip, AdamW) on one in-memory batch,
    after two warm-up steps. Also used by bench_idm_train.py."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=weight_decay, foreach=True)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        opt.step()
    return time.perf_counter() - t0


def bare_loop(cfg: WorldModelConfig, batch: dict, steps: int, grad_clip: float) -> float:
    """clips/s of the bare loop over the world model."""
    torch.manual_seed(0)
    return steps * batch["video"].shape[0] / timed_steps(WorldModel(cfg).train(), batch, steps, grad_clip)


def loop(cfg: WorldModelConfig, clips: list[dict], steps: int, train_cfg: TrainConfig) -> float:
    """clips/s of train_world_model end to end (data loading, logging, progress bar, final checkpoint)."""
    torch.manual_seed(0)
    model = WorldModel(cfg)
    with tempfile.TemporaryDirectory() as d:
        train_world_model(model, [Stage("warmup", clips, 2, 1e-3)], train_cfg, d, progress=False)
        t0 = time.perf_counter()
        res = train_world_model(model, [Stage("bench", clips, steps, 1e-3)], train_cfg, d + "/b", progress=True)
        wall = time.perf_counter() - t0
    return res.steps * train_cfg.batch_size / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)  # the 2 cores are shared; see report
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from flywheel.compose import compose, to_object

    cfg = to_object(compose(["preset=demo"])).world_model  # the demo's model, not the dataclass defaults
    assert isinstance(cfg, WorldModelConfig)
    train_cfg = TrainConfig(batch_size=args.batch_size, log_every=10)
    clips = make_clips(cfg, 4 * args.batch_size)
    batch = collate_clips(clips[: args.batch_size])
    bare, ours = [], []
    for _ in range(args.rounds):  # interleaved, so load drift on a shared machine hits both
        bare.append(bare_loop(cfg, batch, args.steps, train_cfg.grad_clip))
        ours.append(loop(cfg, clips, args.steps, train_cfg))
    b, o = statistics.median(bare), statistics.median(ours)
    print(json.dumps({
        "bench": "wm_train", "device": "cpu", "threads": args.threads, "batch_size": args.batch_size,
        "frames": cfg.num_frames, "image_size": cfg.image_size, "action_map": cfg.action_map,
        "action_mlp": [cfg.action_hidden] * cfg.action_layers, "steps": args.steps, "rounds": args.rounds,
        "bare_clips_per_s": round(b, 2), "loop_clips_per_s": round(o, 2),
        "ratio_loop_vs_bare": round(o / b, 3), "target_ratio_min": 0.9, "meets_target": o / b >= 0.9,
        "all_bare": [round(x, 2) for x in bare], "all_loop": [round(x, 2) for x in ours],
    }))


if __name__ == "__main__":
    main()
