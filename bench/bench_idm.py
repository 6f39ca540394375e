"""IDM extraction latency on CPU (tiny config): a 16-frame 64x64 video with K=8, and its scaling in K and T.

Baseline measured in the same run: the same K=8 draws taken one at a time (K separate K=1
extractions, averaged), i.e. without batching the noise draws; `ratio_vs_unbatched` < 1 is the speed-up
of drawing all windows x K in one batch. The seeds report 1 s of IDM extraction on GPU at full size.
Prints one JSON object.

    .venv/bin/python bench/bench_idm.py [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from policies.idm import IDMConfig, InverseDynamicsModel


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up (lazy imports, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = IDMConfig()  # tiny: small_cnn, 64x64, W=8, K=8
    model = InverseDynamicsModel(cfg).eval()
    p0 = torch.zeros(cfg.proprio_dim)

    def video(t: int) -> torch.Tensor:
        return torch.rand(t, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(t))

    v16 = video(16)
    headline = median_s(lambda: model.extract(v16, p0, noise_samples=8), args.repeats)
    unbatched = median_s(
        lambda: [model.extract(v16, p0, seed=s, noise_samples=1) for s in range(8)], args.repeats
    )
    by_k = {
        k: median_s(lambda k=k: model.extract(v16, p0, noise_samples=k), args.repeats) for k in (1, 2, 4, 8, 16)
    }
    by_t = {
        t: median_s(lambda t=t: model.extract(video(t), p0, noise_samples=8), args.repeats) for t in (8, 16, 32)
    }
    print(json.dumps({
        "bench": "idm_extraction_latency",
        "device": "cpu",
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "config": {"backbone": cfg.backbone, "image_size": cfg.image_size, "window": cfg.window,
                   "flow_steps": cfg.flow_steps, "proprio_passes": cfg.proprio_passes,
                   "hidden_dim": cfg.hidden_dim, "head_layers": cfg.head_layers},
        "params": sum(p.numel() for p in model.parameters()),
        "latency_s_T16_K8": headline,
        "baseline_unbatched_K8_s": unbatched,
        "ratio_vs_unbatched": headline / unbatched,
        "latency_s_by_K_T16": {str(k): v for k, v in by_k.items()},
        "latency_s_by_T_K8": {str(t): v for t, v in by_t.items()},
        "ms_per_action_T32_K8": 1000 * by_t[32] / 31,
        "seeds_reference_gpu_full_size_s": 1.0,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
