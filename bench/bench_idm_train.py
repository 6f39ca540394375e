"""IDM training speed, the demo preset's pose IDM (the demo's bootstrap long pole): seconds per step of
`train_idm` over an in-memory window dataset, vs a bare torch loop over one batch of the same model; and
the bare loop with the backbone's activations channels-last (the default) vs contiguous (the baseline,
measured in the same run). Prints one JSON object.

    .venv/bin/python bench/bench_idm_train.py [--threads 1] [--steps 20] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
from bench_wm_train import timed_steps

from flywheel.config import TrainConfig
from flywheel.training.idm import WindowDataset, train_idm
from policies.idm import InverseDynamicsModel
from policies.idm.modeling_idm import SmallCNN


def episodes(cfg, n: int, t: int = 40) -> list[dict]:
    rng = np.random.default_rng(0)
    s, a = cfg.image_size, cfg.action_dim
    return [{"frames": rng.integers(0, 256, size=(t + 1, s, s, 3), dtype=np.uint8),
             "proprio": rng.normal(size=(t + 1, cfg.proprio_dim)).astype(np.float32),
             "actions": rng.normal(size=(t, a)).astype(np.float32)} for _ in range(n)]


def bare_loop(cfg, batch: dict, steps: int, channels_last: bool) -> float:
    """Seconds per step of the bare loop over the IDM, its CNN channels-last or contiguous."""
    SmallCNN.channels_last = channels_last
    try:
        torch.manual_seed(0)
        model = InverseDynamicsModel(cfg).train()
        return timed_steps(model, batch, steps, grad_clip=1.0, weight_decay=1e-4) / steps
    finally:
        SmallCNN.channels_last = True


def loop(cfg, ds: WindowDataset, steps: int, train_cfg: TrainConfig) -> float:
    """Seconds per step of train_idm end to end (sampling, batching, conversion, checkpoints)."""
    torch.manual_seed(0)
    model = InverseDynamicsModel(cfg)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train_idm(model, ds, train_cfg, d, steps=steps + 2, lr=1e-3, progress=False, save_every=10**9)
        return (time.perf_counter() - t0) / (steps + 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)  # the demo trains the IDM on one core
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from flywheel.compose import compose, to_object

    full = to_object(compose(["preset=demo"]))
    cfg, train_cfg = full.idm, full.train
    ds = WindowDataset(episodes(cfg, 8), cfg.window, all_frames=cfg.target == "pose")
    bs = train_cfg.idm_batch_size or train_cfg.batch_size
    batch = {k: torch.stack([ds[i % len(ds)][k] for i in range(bs)]) for k in ds[0]}
    cl, contig, ours = [], [], []
    for _ in range(args.rounds):  # interleaved, so load drift on a shared machine hits all three
        contig.append(bare_loop(cfg, batch, args.steps, channels_last=False))
        cl.append(bare_loop(cfg, batch, args.steps, channels_last=True))
        ours.append(loop(cfg, ds, args.steps, train_cfg))
    c, b, o = statistics.median(contig), statistics.median(cl), statistics.median(ours)
    print(json.dumps({
        "bench": "idm_train", "device": "cpu", "threads": args.threads, "target": cfg.target,
        "batch_size": bs, "image_size": cfg.image_size, "steps": args.steps, "rounds": args.rounds,
        "bare_s_per_step": round(b, 4), "bare_contiguous_s_per_step": round(c, 4),
        "speedup_channels_last": round(c / b, 3), "loop_s_per_step": round(o, 4),
        "ratio_loop_vs_bare": round(b / o, 3),
        "demo_idm_steps": train_cfg.idm_steps, "demo_idm_minutes_at_bare": round(train_cfg.idm_steps * b / 60, 2),
    }))


if __name__ == "__main__":
    main()
