"""Scripted-expert success per task family and split (target: >= 0.9 per family on in_distribution).

    .venv/bin/python bench/bench_expert.py [--episodes 50] [--splits in_distribution,new_tasks,ood_objects]

Runs the expert (noise 0, rendering off: success does not depend on pixels) on the first `episodes`
items of each family of each split and prints ONE JSON object: success rate per split and family,
episode lengths, wall time, and the ratio of each rate to the 0.9 target. Also, per family, how the
expert's own actions fare under the kinematic feasibility check the imagine-then-act planner applies to
each candidate (`--chunk` actions from the measured joints, as the planner executes them): the fraction
of chunks scoring below `--min-feasibility` and the most frequent violation kinds.
"""
from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np

from envs.config import EnvConfig
from envs.expert import ScriptedExpert
from envs.splits import load_split
from envs.tabletop import HumanoidTabletopEnv
from envs.tasks import SPLIT_FAMILIES
from flywheel.evaluation.feasibility import default_checker

TARGET = 0.9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--splits", default="in_distribution,new_tasks,ood_objects")
    ap.add_argument("--families", default="")
    ap.add_argument("--max-steps", type=int, default=EnvConfig().max_steps)
    ap.add_argument("--physics-dt", type=float, default=EnvConfig().physics_dt, help="MuJoCo timestep (s)")
    ap.add_argument("--chunk", type=int, default=4, help="actions per feasibility-checked chunk (policy.horizon)")
    ap.add_argument("--min-feasibility", type=float, default=0.5, help="the planner's rejection threshold")
    args = ap.parse_args()
    env = HumanoidTabletopEnv(EnvConfig(render=False, max_steps=args.max_steps, physics_dt=args.physics_dt))
    checker = default_checker(1.0 / env.cfg.control_hz)
    expert = ScriptedExpert(env)
    out: dict = {"episodes_per_family": args.episodes, "max_steps": args.max_steps, "physics_dt": args.physics_dt, "target": TARGET, "splits": {}}
    t0 = time.perf_counter()
    for split in args.splits.split(","):
        res = {}
        for fam in SPLIT_FAMILIES[split]:
            if args.families and fam not in args.families.split(","):
                continue
            items = [it for it in load_split(split) if it.family == fam][: args.episodes]
            wins, lengths, failed = 0, [], []
            scores, kinds = [], collections.Counter()
            for it in items:
                obs, info = env.reset(options={"task": it.task()})
                expert.reset()
                actions, joints = [], []
                for t in range(args.max_steps):
                    joints.append(obs["proprio"][: len(obs["proprio"]) // 2])
                    actions.append(expert.act(obs))
                    obs, _, term, trunc, info = env.step(actions[-1])
                    if term or trunc:
                        break
                for c in range(0, len(actions) - args.chunk + 1, args.chunk):
                    rep = checker.check(np.array(actions[c: c + args.chunk]), joints[c])
                    scores.append(rep.score)
                    kinds.update({v.kind for v in rep.violations})
                wins += bool(info["success"])
                lengths.append(t + 1)
                if not info["success"]:
                    failed.append(it.seed)
            rate = wins / max(1, len(items))
            res[fam] = {"success": rate, "n": len(items), "mean_steps": sum(lengths) / max(1, len(lengths)),
                        "ratio_to_target": rate / TARGET, "failed_seeds": failed[:10],
                        "chunks_below_min_feasibility": round(float(np.mean(np.array(scores) < args.min_feasibility)), 3)
                        if scores else None,
                        "chunks_with_violation_kind": dict(kinds.most_common())}
        out["splits"][split] = res
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
