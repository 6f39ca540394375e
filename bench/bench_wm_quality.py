"""World-model quality at demo scale: train the tiny model with the demo recipe on store data, then
measure held-out evaluation-mode PSNR/SSIM against copying the start (= last observed) frame forward, the same
in imagine mode (no actions),
and the success head's AUROC. Prints one JSON object and saves it to bench/results/.

Data, as the demo flywheel's bootstrap collects it: scripted-expert episodes on training-mix tasks
(seeds 10000+i), play episodes (20000+i), plus failures (a very noisy expert and truncated experts), all
recorded with `ExperienceStore.record_episode` (arrays + initial state) in a temporary store. Training
goes through `StoreTrainer.train_world_model` (the demo preset's `train.wm_stages`); every 5th episode
(`is_held_out`) is kept out of training and used for the metrics.

    nice -n 10 .venv/bin/python bench/bench_wm_quality.py [--expert 40] [--play 20] [--failures 10]
        [--threads 2] [--steps-scale 1.0] [--eval-steps N] [--curve 1,2,4,8] [--keep DIR] [--reuse DIR]
        [--model CKPT]
        [override ...]

Evaluation mode samples with `--eval-steps` (default: the model's `world_model.predict_steps`, as the
flywheel's held-out metric does); `psnr_gain_by_steps` gives the same metric (minus copying) for each step count of `--curve`.

Extra positional arguments are Hydra overrides (e.g. `train.batch_size=16 world_model.prediction=velocity`).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch


def collect(store, n_expert: int, n_play: int, n_fail: int, image_size: int, max_steps: int) -> dict:
    """Record episodes into `store`; returns counts and collection seconds."""
    from db.records import EpisodeRecord
    from envs.config import EnvConfig
    from envs.expert import ScriptedExpert
    from envs.play import PlayPolicy, collect_episode
    from envs.tabletop import HumanoidTabletopEnv
    from policies.captions import SceneCaptionUpsampler

    env = HumanoidTabletopEnv(EnvConfig(image_size=image_size, max_steps=max_steps))
    upsampler = SceneCaptionUpsampler()  # the planner's default captions
    t0 = time.perf_counter()
    jobs = [("expert", "scripted_expert", 10_000 + i, None) for i in range(n_expert)]
    jobs += [("play", "play", 20_000 + i, None) for i in range(n_play)]
    # failures: a very noisy expert, or an expert stopped well before it could finish
    jobs += [("expert", "noisy_expert" if i % 2 else "truncated_expert", 30_000 + i, None) for i in range(n_fail)]
    counts = {"expert": 0, "play": 0, "success": 0, "failure": 0}
    for source, policy_name, seed, _ in jobs:
        if policy_name == "play":
            policy = PlayPolicy(env, seed=seed)
        else:
            policy = ScriptedExpert(env, noise=3.0 if policy_name == "noisy_expert" else 0.0, seed=seed)
        steps = 6 if policy_name == "truncated_expert" else None
        ep = collect_episode(env, policy, None, seed=seed, max_steps=steps)
        rec = EpisodeRecord(source=source, task_family=ep.task["family"], instruction=ep.task["instruction"],
                            policy=policy_name, success=ep.success, length=ep.length, seed=seed,
                            caption=upsampler.upsample(ep.task["instruction"], ep.scene), task=ep.task)
        store.record_episode(rec, {"frames": ep.frames, "proprio": ep.proprio, "actions": ep.actions},
                             initial_state=ep.initial_state)
        counts[source] += 1
        counts["success" if ep.success else "failure"] += 1
    env.close()
    counts["collect_s"] = round(time.perf_counter() - t0, 1)
    return counts


def held_out_clips(store, num_frames: int) -> tuple[list[dict], int]:
    """Held-out clips: non-overlapping windows of every held-out episode plus the one ending on the outcome."""
    from flywheel.data import ClipDataset, EpisodeFilter, is_held_out, load_episodes

    eps = [e for e in load_episodes(store, EpisodeFilter(limit=None)) if is_held_out(e.id) and len(e.actions)]
    ds = ClipDataset(eps, num_frames=num_frames, stride=num_frames - 1)
    return [ds[i] for i in range(len(ds))], len(eps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expert", type=int, default=40)
    ap.add_argument("--play", type=int, default=20)
    ap.add_argument("--failures", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps")
    ap.add_argument("--eval-steps", type=int, default=None,
                    help="sampling steps in evaluation mode (default: the model's predict_steps)")
    ap.add_argument("--curve", default="1,2,4,8", help="evaluation-mode PSNR for each of these step counts")
    ap.add_argument("--imagine-steps", type=int, default=8, help="sampling steps in imagine mode")
    ap.add_argument("--guidance", type=float, default=2.0, help="text guidance in imagine mode")
    ap.add_argument("--reuse", default=None, help="a data dir kept by --keep: skip collection")
    ap.add_argument("--keep", default=None, help="keep the store in this data dir")
    ap.add_argument("--model", default=None,
                    help="a world-model checkpoint dir to measure instead of training one (e.g. a flywheel run's "
                         "champion, on another store's held-out clips)")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from db.store import ExperienceStore
    from flywheel.compose import compose, to_object
    from flywheel.evaluation.video_metrics import evaluate_world_model
    from flywheel.registry import ModelRegistry
    from flywheel.training.pipeline import StoreTrainer
    from policies.world_model import WorldModel

    tmp = tempfile.TemporaryDirectory()
    data_dir = args.reuse or args.keep or tmp.name
    cfg = to_object(compose(["preset=demo", f"data_dir={data_dir}", *args.overrides]))
    for s in cfg.train.wm_stages:
        s.steps = max(1, round(s.steps * args.steps_scale))
    store = ExperienceStore.from_config(cfg.db, data_dir, create=True)
    if args.reuse:
        counts = {"reused": args.reuse, "episodes": store.counts().get("episodes", 0)}
    else:
        counts = collect(store, args.expert, args.play, args.failures, cfg.env.image_size, cfg.env.max_steps)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.model:
        model_path = args.model
    else:
        trainer = StoreTrainer(cfg, store, ModelRegistry(store, data_dir), progress=False, say=lambda s: None)
        trainer.work = Path(tempfile.mkdtemp(prefix="wmq-"))
        model_path = trainer.train_world_model(parent=None, phase=f"bench-{time.time_ns()}").path
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    model = WorldModel.from_pretrained(model_path)

    clips, n_eps = held_out_clips(store, cfg.world_model.num_frames)
    t0 = time.perf_counter()
    eval_steps = args.eval_steps or model.cfg.predict_steps
    m = evaluate_world_model(model, clips, steps=eval_steps, imagine=True, guidance=args.guidance,
                             imagine_steps=args.imagine_steps)
    eval_s = time.perf_counter() - t0
    by_steps = {eval_steps: m}
    for k in sorted({int(x) for x in args.curve.split(",") if x.strip()} | {1}):
        if k not in by_steps:
            by_steps[k] = evaluate_world_model(model, clips, steps=k)
    m1 = by_steps[1]
    out = {
        "bench": "wm_quality", "device": "cpu", "threads": args.threads, "data": counts,
        "config": {"world_model": {k: getattr(cfg.world_model, k) for k in (
            "vae", "image_size", "num_frames", "patch_size", "num_layers", "num_attention_heads",
            "attention_head_dim", "ffn_dim", "residual", *[k for k in ("prediction", "ema_decay",
                                                                        "warmup_steps") if hasattr(cfg.world_model, k)])},
                   "batch_size": cfg.train.batch_size,
                   "stages": [[s.name, s.steps, s.lr] for s in cfg.train.wm_stages], "overrides": args.overrides},
        "model": str(model_path) if args.model else None, "train_wall_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1), "held_out_episodes": n_eps, "held_out_clips": int(m["n_clips"]),
        "static_clips": int(m["n_static_clips"]),
        "eval_steps": eval_steps, "predict_steps": model.cfg.predict_steps, "imagine_steps": args.imagine_steps,
        "psnr": round(m["psnr"], 2), "psnr_copy_last": round(m["psnr_copy_last"], 2),
        "psnr_gain_db": round(m["psnr"] - m["psnr_copy_last"], 2), "psnr_gain_se": round(m["psnr_gain_se"], 2),
        "ssim": round(m["ssim"], 4), "ssim_copy_last": round(m["ssim_copy_last"], 4),
        "psnr_1step": round(m1["psnr"], 2), "ssim_1step": round(m1["ssim"], 4),
        # evaluation-mode PSNR minus copying for each number of sampling steps
        "psnr_gain_by_steps": {str(k): round(v["psnr"] - v["psnr_copy_last"], 2) for k, v in sorted(by_steps.items())},
        "imagine_psnr": round(m["psnr_imagine"], 2),
        "imagine_ssim": round(m["ssim_imagine"], 4), "imagine_guidance": args.guidance,
        "success_auroc": round(m["success_auroc"], 3), "n_labelled": int(m["n_labelled"]),
        "eval_s": round(eval_s, 1),
        # where the error is (flywheel.evaluation.video_metrics.error_regions): pixels that move, static ones near
        # them, the rest; MSE of the model at eval_steps and at 1 step, and of copying
        "error_regions": {k: {"frac": round(m[f"frac_{k}"], 3), "mse": round(m[f"mse_{k}"], 5),
                              "mse_1step": round(m1[f"mse_{k}"], 5), "mse_copy": round(m[f"mse_copy_{k}"], 5)}
                          for k in ("moving", "near", "far")},
        "meets_target": m["psnr"] > m["psnr_copy_last"] + 1.0,
    }
    line = json.dumps(out)
    print(line)
    res = Path(__file__).resolve().parent / "results"
    res.mkdir(exist_ok=True)
    (res / f"wm_quality{('-' + args.tag) if args.tag else ''}.json").write_text(line + "\n")
    store.close()
    tmp.cleanup()


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
