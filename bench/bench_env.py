"""Env step throughput with the 64x64 egocentric render vs raw MuJoCo on the same model.

    .venv/bin/python bench/bench_env.py [--steps 300] [--image-size 64]

Baseline: `mj_step(model, data, nstep=n_substeps)` + a render of the same camera with the same
renderer, i.e. the irreducible cost of one control step. Candidate: `HumanoidTabletopEnv.step`
(action checks, control, physics, render, proprio, success predicate, info). Both run in this process,
interleaved in rounds so machine load hits both alike. Prints ONE JSON object with steps/s of each and
their ratio (target >= 0.85).
"""
from __future__ import annotations

import argparse
import json
import time

import mujoco
import numpy as np

from envs.config import EnvConfig
from envs.robot import ACTION_HIGH, ACTION_LOW, HOME_QPOS
from envs.tabletop import HumanoidTabletopEnv
from envs.tasks import sample_task

TARGET = 0.85


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    env = HumanoidTabletopEnv(EnvConfig(image_size=args.image_size, max_steps=10**9))
    env.reset(options={"task": sample_task("place", 0, "in_distribution")})
    rng = np.random.default_rng(0)
    actions = np.clip(HOME_QPOS + rng.normal(0, 0.05, (args.steps, 16)), ACTION_LOW, ACTION_HIGH).astype(np.float32)
    m, d, n = env.model, env.data, env.n_substeps
    renderer = env._renderer  # the same renderer (same GL context, same scene settings) for the baseline

    t_env = t_raw = 0.0
    for _ in range(args.rounds):
        state = env.get_state()
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        t_env += time.perf_counter() - t0
        env.set_state(state)
        t0 = time.perf_counter()
        for a in actions:
            d.ctrl[:] = a
            mujoco.mj_step(m, d, nstep=n)
            renderer.render(d)
        t_raw += time.perf_counter() - t0
        env.set_state(state)
    total = args.steps * args.rounds
    env_sps, raw_sps = total / t_env, total / t_raw
    print(json.dumps({
        "image_size": args.image_size, "control_hz": env.cfg.control_hz, "n_substeps": n,
        "steps": total, "env_steps_per_s": round(env_sps, 1), "raw_steps_per_s": round(raw_sps, 1),
        "env_physics_steps_per_s": round(env_sps * n, 1), "ratio": round(env_sps / raw_sps, 3),
        "target_ratio": TARGET, "meets_target": env_sps / raw_sps >= TARGET,
    }))


if __name__ == "__main__":
    main()
