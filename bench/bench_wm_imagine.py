"""Imagine latency of the tiny world model on CPU: n=8 candidates in one batch vs n=1.

16 frames at 64x64, 8 Euler steps, guidance 2 (the planner's defaults). Target: n=8 takes at most
3x the time of n=1. Also reports the demo planner's call (n=4, 9 frames). Prints one JSON object.

    .venv/bin/python bench/bench_wm_imagine.py [--threads N] [--repeats R]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from policies.world_model import WorldModel, WorldModelConfig


def timed(model: WorldModel, frame: torch.Tensor, n: int, frames: int, steps: int, guidance: float,
          repeats: int) -> float:
    """Median seconds of `repeats` imagine calls (after one warm-up)."""
    model.imagine(frame, "put the red cube in the bowl", n=n, steps=1, guidance=guidance, num_frames=frames)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        model.imagine(frame, "put the red cube in the bowl", n=n, steps=steps, guidance=guidance, seed=r,
                      num_frames=frames)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)  # the 2 cores are shared; see report
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from flywheel.compose import compose, to_object

    cfg = to_object(compose(["preset=demo"])).world_model  # the tiny config, as configs/world_model/tiny.yaml sets it
    assert isinstance(cfg, WorldModelConfig)
    model = WorldModel(cfg).eval()
    frame = torch.rand(3, cfg.image_size, cfg.image_size)
    n1 = timed(model, frame, 1, 16, args.steps, args.guidance, args.repeats)
    n8 = timed(model, frame, 8, 16, args.steps, args.guidance, args.repeats)
    demo = timed(model, frame, 4, cfg.num_frames, args.steps, args.guidance, args.repeats)
    print(json.dumps({
        "bench": "wm_imagine",
        "device": "cpu",
        "threads": args.threads,
        "config": {"size": cfg.size, "vae": cfg.vae, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
                   "num_layers": cfg.num_layers, "inner_dim": cfg.num_attention_heads * cfg.attention_head_dim,
                   "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)},
        "frames": 16, "steps": args.steps, "guidance": args.guidance,
        "n1_s": round(n1, 3), "n8_s": round(n8, 3),
        "ratio_n8_vs_n1": round(n8 / n1, 2), "target_ratio_max": 3.0, "meets_target": n8 / n1 <= 3.0,
        "demo_n4_9frames_s": round(demo, 3),
    }))


if __name__ == "__main__":
    main()
