"""Planning latency of imagine-then-act per step on CPU: imagine + success head + IDM extraction +
feasibility, for N=1 and N=8 candidates, with the tiny (demo) world model and IDM.

The policy is the real `ImagineThenActPolicy` planning from a real env observation (64x64 frame, the demo
planner's 9 imagined frames, 8 sampling steps, guidance 2); untrained weights, which cost the same time.
The IDM's action statistics are set at the home pose so that every candidate is scored all the way
(feasibility included). Baseline: N=1 in the same run (the ratio says how much batching the N futures saves over N x N=1).
Prints one JSON object.

    .venv/bin/python bench/bench_planning.py [--threads 1] [--repeats 5] [override ...]

Extra arguments are Hydra overrides of the demo preset (e.g. `world_model.imagine_joints=true`: the IDM then
reads the imagined joints, not the frames).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

PARTS = ("imagine_s", "success_s", "extract_s", "feasibility_s", "plan_s")


def measure(policy, obs, n: int, repeats: int) -> dict[str, float]:
    """Median seconds of each part over `repeats` planning steps (after one warm-up step)."""
    policy.pcfg.n_candidates = n
    policy.act(obs)
    runs = []
    for _ in range(repeats):
        policy.act(obs)
        runs.append(dict(policy.timings))
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in PARTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="sampling steps of the world model")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the demo preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from envs import robot
    from envs.backend import make_backend
    from envs.tasks import sample_task
    from flywheel.compose import compose, to_object
    from flywheel.evaluation.feasibility import default_checker
    from policies.idm import InverseDynamicsModel
    from policies.imagine_then_act import ImagineThenActPolicy
    from policies.world_model import WorldModel

    with TemporaryDirectory() as tmp:
        cfg = to_object(compose([f"data_dir={tmp}", "preset=demo", f"policy.sampling_steps={args.steps}",
                                 "policy.resample_rounds=0", *args.overrides]))  # one batch per planning step
    backend = make_backend("sim", cfg.backend, cfg.env)
    task = sample_task("pick", 0)
    obs = backend.reset(task=task, seed=0)
    wm, idm = WorldModel(cfg.world_model).eval(), InverseDynamicsModel(cfg.idm).eval()
    # action statistics at the home pose: extractions are small feasible motions, so every candidate is
    # scored all the way (a limit-violating one would skip the feasibility check and flatter the timing)
    home = torch.as_tensor(robot.HOME_QPOS, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    idm.fit_normalization(home + 1e-3 * torch.randn(64, 16, generator=g),
                          torch.cat([home, torch.zeros(16)]) + 1e-3 * torch.randn(64, 32, generator=g))
    policy = ImagineThenActPolicy(cfg, world_model=wm, idm=idm, feasibility=default_checker(0.1).check,
                                  action_low=backend.action_low, action_high=backend.action_high,
                                  workspace=backend.safety.workspace)
    policy.reset(task.to_dict(), task.instruction, backend.scene_description())
    n1 = measure(policy, obs, 1, args.repeats)
    n8 = measure(policy, obs, 8, args.repeats)
    backend.close()
    p = cfg.policy
    print(json.dumps({
        "bench": "planning",
        "device": "cpu",
        "threads": args.threads,
        "overrides": args.overrides,
        "repeats": args.repeats,
        "config": {"image_size": cfg.env.image_size, "imagine_frames": p.imagine_frames, "sampling_steps": p.sampling_steps,
                   "guidance": p.guidance, "horizon": p.horizon, "idm_noise_samples": cfg.idm.noise_samples,
                   "idm_window": cfg.idm.window, "wm_params_m": round(sum(x.numel() for x in wm.parameters()) / 1e6, 3),
                   "idm_params_m": round(sum(x.numel() for x in idm.parameters()) / 1e6, 3)},
        "n1": n1,
        "n8": n8,
        "ratio_n8_vs_n1": round(n8["plan_s"] / n1["plan_s"], 2),
        "ratio_n8_vs_8x_n1": round(n8["plan_s"] / (8 * n1["plan_s"]), 2),
        "n8_per_candidate_s": round(n8["plan_s"] / 8, 4),
        "control_period_s": round(p.horizon / cfg.env.control_hz, 3),
    }))


if __name__ == "__main__":
    main()
