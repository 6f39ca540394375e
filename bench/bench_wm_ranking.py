"""Benchmark: the world model as a policy evaluator over >= 8 policy checkpoints.

Predicts each checkpoint's success with the champion world model of `--data-dir` (rolled out in
evaluation mode, no robot) and measures real sim success from the same initial states; prints ONE JSON
object with Pearson r, the pairwise ranking accuracy (true gap >= 15 points) and the number of such pairs,
next to a chance baseline measured in the same run (the same predictions randomly permuted across
policies: what an evaluator that knows nothing about the policies scores), and the time per episode of a
world-model rollout vs a sim rollout.

If the data dir has no champion world model, a demo one is built first: expert episodes (noise mixed in
[0, 3] so the success head sees failures) and play episodes are collected in-process into the store, then
the world model (multi-stage recipe) and the IDM are trained with `StoreTrainer` and promoted.

    nice -n 10 .venv/bin/python bench/bench_wm_ranking.py --data-dir /tmp/wmr/data --states 12
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

from flywheel.config import Config, StageConfig


def build_demo_data_dir(cfg: Config, n_expert: int, n_play: int, wm_steps: int, idm_steps: int) -> dict:
    """Collect episodes into the store of cfg.data_dir and train + promote a world model and an IDM."""
    from db.records import EpisodeRecord
    from db.store import ExperienceStore
    from envs.expert import ScriptedExpert
    from envs.play import PlayPolicy, collect_episode
    from envs.tabletop import HumanoidTabletopEnv
    from envs.tasks import sample_task
    from flywheel.registry import ModelRegistry
    from flywheel.training.pipeline import StoreTrainer

    t0 = time.monotonic()
    store = ExperienceStore.from_config(cfg.db, cfg.data_path, create=True)
    registry = ModelRegistry(store, cfg.data_path)
    env = HumanoidTabletopEnv(cfg.env)
    noises = [0.0, 0.5, 1.0, 2.0, 3.0]
    n_ok = 0
    for i in range(n_expert + n_play):
        seed = 50_000 + i
        task = sample_task(None, seed, "train")
        if i < n_expert:
            noise = noises[i % len(noises)]
            pol, source, name = ScriptedExpert(env, noise=noise, seed=seed), "expert", "scripted_expert"
        else:
            noise, pol, source, name = 0.0, PlayPolicy(env, seed=seed), "play", "play"
        ep = collect_episode(env, pol, task, seed)
        n_ok += bool(ep.success) and source == "expert"
        rec = EpisodeRecord(source=source, task_family=ep.task["family"], instruction=task.instruction, policy=name,
                            success=ep.success, length=ep.length, seed=seed, task=ep.task, meta={"noise": noise})
        store.record_episode(rec, {"frames": ep.frames, "proprio": ep.proprio, "actions": ep.actions},
                             initial_state=ep.initial_state)
    env.close()
    t_data = time.monotonic() - t0
    trainer = StoreTrainer(cfg, store, registry, progress=False, say=lambda m: None)
    wm = trainer.train_world_model(parent=None, phase="bench-bootstrap")
    idm = trainer.train_idm(parent=None, phase="bench-bootstrap")
    registry.promote("world_model", wm.id, "bench_wm_ranking: demo world model")
    registry.promote("idm", idm.id, "bench_wm_ranking: demo IDM")
    return {"expert_episodes": n_expert, "expert_successes": n_ok, "play_episodes": n_play,
            "wm_train_steps": wm_steps, "idm_train_steps": idm_steps, "collect_s": t_data,
            "build_s": time.monotonic() - t0}


def permutation_baseline(pred: list[float], real: list[float], n: int = 2000, seed: int = 0) -> dict:
    """Chance level: r and pairwise accuracy of the predictions shuffled across policies."""
    from flywheel.evaluation.wm_evaluator import compare

    rng = np.random.default_rng(seed)
    rs, accs = [], []
    for _ in range(n):
        c = compare(list(rng.permutation(pred)), real)
        rs.append(c.pearson_r)
        accs.append(c.pairwise_accuracy)
    return {"pearson_r": float(np.nanmean(rs)), "pairwise_accuracy": float(np.nanmean(accs)), "rs": rs}


def main() -> None:
    import torch

    from db.store import ExperienceStore
    from flywheel.evaluation import wm_evaluator as wme
    from flywheel.hooks import load_checked
    from flywheel.registry import ModelRegistry

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/tmp/wmr/data")
    ap.add_argument("--states", type=int, default=12)
    ap.add_argument("--steps", type=int, default=None,
                    help="diffusion steps per world-model prediction (default: its predict_steps)")
    ap.add_argument("--policies", nargs="+", default=None)
    ap.add_argument("--no-imagine", action="store_true", help="leave imagine_then_act out (it is the slowest)")
    ap.add_argument("--expert-episodes", type=int, default=40)
    ap.add_argument("--play-episodes", type=int, default=12)
    ap.add_argument("--wm-steps", type=int, default=400)
    ap.add_argument("--idm-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = Config(data_dir=args.data_dir)
    half = max(1, args.wm_steps // 4)
    cfg.train = dataclasses.replace(cfg.train, idm_steps=args.idm_steps, wm_stages=[
        StageConfig("play", {"play": 1.0}, half, 1e-3),
        StageConfig("tasks", {"expert": 0.8, "play": 0.2}, args.wm_steps - half, 5e-4)])
    store = ExperienceStore.from_config(cfg.db, cfg.data_path, create=True)
    registry = ModelRegistry(store, cfg.data_path)
    built = None
    if registry.alias("world_model") is None:
        built = build_demo_data_dir(cfg, args.expert_episodes, args.play_episodes, args.wm_steps, args.idm_steps)
    wm_ref = registry.alias("world_model")
    wm = load_checked("world_model", wm_ref.path).eval()
    if args.policies:
        specs = [wme.PolicySpec.parse(s) for s in args.policies]
    else:
        specs = wme.default_specs(has_models=not args.no_imagine and registry.alias("idm") is not None)
    states = wme.states_from_split(cfg.env, "in_distribution", args.states)

    t0 = time.monotonic()
    results, ranking = wme.evaluate_policies(cfg, wm, specs, states, registry=registry, steps=args.steps,
                                             progress=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.monotonic() - t0
    pred, real = [r.predicted_rate for r in results], [r.real_rate for r in results]
    base = permutation_baseline(pred, real)
    p_perm = float(np.mean([r >= ranking.pearson_r for r in base.pop("rs") if np.isfinite(r)])) \
        if np.isfinite(ranking.pearson_r) else None
    paths = wme.write_ranking_report(results, ranking, cfg.data_path / "reports")
    out = {
        "bench": "wm_ranking", "n_policies": len(results), "n_states": len(states), "sampling_steps": args.steps or wm.cfg.predict_steps,
        "pearson_r": wme.json_number(ranking.pearson_r), "pairwise_accuracy": wme.json_number(ranking.pairwise_accuracy),
        "pairs": ranking.pairs, "min_gap": ranking.min_gap,
        "baseline_shuffled": {"pearson_r": base["pearson_r"], "pairwise_accuracy": base["pairwise_accuracy"]},
        "pairwise_accuracy_ratio_to_baseline": (ranking.pairwise_accuracy / base["pairwise_accuracy"])
        if ranking.pairs and base["pairwise_accuracy"] else None,
        "pearson_r_permutation_p": p_perm,
        "policies": [r.row() for r in results], "world_model_version": wm_ref.version,
        "eval_wall_s": wall, "built": built, "plot": str(paths["plot"]),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
