"""IDM quality on held-out episodes: DTW and MSE vs the hold-still baseline, and the IDM ceiling per family.

The flywheel's bootstrap, in miniature: a temporary experience store gets expert demonstrations
(training-mix tasks, seeds 10_000+i) and play (seeds 20_000+i); the IDM is trained the way the
flywheel trains it (`StoreTrainer.train_idm`: every stored episode except the held-out ids, the demo
preset's TrainConfig). Then held-out expert episodes on `in_distribution` split items are recorded with
their initial states (run to the episode limit, the expert holding its result after success), and the IDM's extraction from their real frames is (a) compared with the true
actions (DTW/MSE, baseline: repeat the frame-0 joint positions) and (b) replayed open-loop in sim from
the recorded initial state (replay success / expert success, per family): from the frame-0 proprio
alone (open loop over the whole episode); re-extracted every `--replan` steps from the recorded proprio
there (as the imagine-then-act planner replans), with the chunk's frames or `--lookahead` frames; and
per step, each action read off by the window that starts at it (the IDM ceiling; target >= 0.8).
Closed-loop tracking is the contrast: the IDM follows the recorded video from the sim's own frame and
proprio each step, so its errors feed back (`track_video`). `video_reliance` asks whether the IDM reads
the motion at all: its first action from the real video vs from a frozen one vs holding still, on the
held-out expert episodes and on `--perturbed` episodes of the disturbed expert (states the expert never
visits, where predicting the expert's next action from the state fails).
Replaying the true actions the same way is the control (must give 1.0); replaying the recorded joint
positions of each step as its target (no model: `control_recorded_positions_relative`) is the baseline the
per-step ceiling must be read against, since it follows the recording one step behind; replaying them with seeded
per-step noise on the arm joints shows how precise an IDM has to be for open-loop replay to succeed.
Prints one JSON object and writes it to bench/results/idm_eval.json.

    MUJOCO_GL=egl .venv/bin/python bench/bench_idm_eval.py [--episodes 40] [--play 20] [--heldout 20]
        [--steps N (default: the preset's train.idm_steps)] [--preset demo] [--threads 1]
        [--data-dir DIR (keep stores and models; reused)] [--settle N] [--override idm.x=y]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")


def record(store, ep, source: str, policy: str, seed: int, split: str | None = None) -> int:
    from db.records import EpisodeRecord

    rec = EpisodeRecord(source=source, task_family=ep.task["family"], instruction=ep.task["instruction"],
                        policy=policy, success=ep.success, length=ep.length, reward=ep.reward, seed=seed,
                        split=split, task=ep.task)
    arrays = {"frames": ep.frames, "proprio": ep.proprio, "actions": ep.actions}
    return store.record_episode(rec, arrays, initial_state=ep.initial_state)


def dtw_mse(true: list[np.ndarray], pred: list[np.ndarray], proprio0: list[np.ndarray]) -> dict:
    """`evaluate_idm`'s figures from extractions already made (one per episode)."""
    from envs.robot import ACTION_HIGH, ACTION_LOW
    from flywheel.evaluation.dtw import dtw_distance, hold_baseline, per_joint_mse

    d_i, d_b, m_i, m_b = [], [], [], []
    for t, p, p0 in zip(true, pred, proprio0):
        base = hold_baseline(p0, t.shape[0], t.shape[1])
        d_i.append(dtw_distance(t, p, ACTION_LOW, ACTION_HIGH))
        d_b.append(dtw_distance(t, base, ACTION_LOW, ACTION_HIGH))
        m_i.append(per_joint_mse(t, p).mean())
        m_b.append(per_joint_mse(t, base).mean())
    out = {"episodes": len(true), "dtw_idm": float(np.mean(d_i)), "dtw_baseline": float(np.mean(d_b)),
           "mse_idm": float(np.mean(m_i)), "mse_baseline": float(np.mean(m_b))}
    out["dtw_ratio"] = out["dtw_idm"] / out["dtw_baseline"]
    out["mse_ratio"] = out["mse_idm"] / out["mse_baseline"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=None, help="expert training episodes (default: the preset's)")
    ap.add_argument("--play", type=int, default=None, help="play episodes (default: the preset's)")
    ap.add_argument("--heldout", type=int, default=20, help="held-out in_distribution expert episodes")
    ap.add_argument("--steps", type=int, default=None, help="IDM training steps (default: train.idm_steps)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more oversubscribes a shared CPU)")
    ap.add_argument("--settle", type=int, default=0, help="extra steps holding the last extracted action")
    ap.add_argument("--replan", type=int, default=None,
                    help="chunk length of the per-plan ceiling (default: the preset's policy.horizon)")
    ap.add_argument("--lookahead", type=int, default=None,
                    help="frames each per-plan extraction sees (default: the planner's, policy.imagine_frames - 1)")
    ap.add_argument("--perturbed", type=int, default=20,
                    help="held-out episodes of the perturbed expert (envs.expert.PerturbedExpert) for video_reliance")
    ap.add_argument("--override", action="append", default=[], help="extra config overrides, e.g. idm.window=4")
    ap.add_argument("--data-dir", default=None, help="keep the stores and models here (reused when present)")
    ap.add_argument("--out", default="bench/results/idm_eval.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from db.store import ExperienceStore
    from envs.expert import PerturbedExpert, ScriptedExpert
    from envs.play import PlayPolicy, collect_episode
    from envs.splits import load_split
    from envs.tabletop import HumanoidTabletopEnv
    from envs.tasks import sample_task
    from flywheel.compose import compose, to_object
    from flywheel.data import is_held_out
    from flywheel.evaluation.idm_ceiling import (
        CeilingEpisode,
        ceiling_episodes_from_store,
        extract_actions,
        idm_ceiling,
        video_reliance,
    )
    from flywheel.registry import ModelRegistry
    from flywheel.training.pipeline import StoreTrainer
    from policies.idm import InverseDynamicsModel
    from policies.idm.modeling_idm import snap_grippers

    tmp = tempfile.TemporaryDirectory(prefix="bench_idm_eval_") if args.data_dir is None else None
    data_dir = Path(tmp.name if tmp else args.data_dir)
    cfg = to_object(compose([f"preset={args.preset}", f"data_dir={data_dir}", *args.override]))
    if args.steps is not None:
        cfg.train = dataclasses.replace(cfg.train, idm_steps=args.steps)
    n_expert = cfg.flywheel.bootstrap_expert_episodes if args.episodes is None else args.episodes
    n_play = cfg.flywheel.bootstrap_play_episodes if args.play is None else args.play
    store = ExperienceStore.from_config(cfg.db, data_dir, create=True)
    held_store = ExperienceStore.from_config(cfg.db, data_dir / "heldout", create=True)  # never trained on
    env = HumanoidTabletopEnv(cfg.env)
    noise = float(cfg.policy.expert_noise)

    # -- training data, as the flywheel's bootstrap collects it (kept when --data-dir already has it)
    t0 = time.perf_counter()
    if not store.episodes(limit=1):
        for i in range(n_expert):
            seed = 10_000 + i
            ep = collect_episode(env, ScriptedExpert(env, noise=noise, seed=seed), sample_task(None, seed), seed)
            record(store, ep, "expert", "scripted_expert", seed)
        for i in range(n_play):
            seed = 20_000 + i
            ep = collect_episode(env, PlayPolicy(env, seed=seed), sample_task(None, seed), seed)
            record(store, ep, "play", "play", seed)
    if not held_store.episodes(limit=1):
        split = load_split("in_distribution")
        fams = ("pick", "place")  # both families of the split, balanced
        chosen = [i for f in fams for i in [i for i in split if i.family == f][: args.heldout // len(fams)]]
        for it in chosen:
            # the expert keeps going (holding its result) to the episode limit instead of stopping at
            # the step it first succeeds: a replay that succeeds a step later than the expert counts
            ep = collect_episode(env, ScriptedExpert(env, noise=noise, seed=it.seed), it.task(), it.seed,
                                 stop_on_success=False)
            record(held_store, ep, "expert", "scripted_expert", it.seed, split="in_distribution")
    # off the expert's states: disturbed and recovering (DART-style), same items, kept out of training
    pert_eps = []
    for it in [i for i in load_split("in_distribution")][: args.perturbed]:
        ep = collect_episode(env, PerturbedExpert(env, noise=noise, seed=it.seed, rate=0.15), it.task(), it.seed)
        pert_eps.append(CeilingEpisode.from_episode_data(ep))
    t_collect = time.perf_counter() - t0
    rows = store.episodes(limit=None)
    experts = [r for r in rows if r.source == "expert"]

    # -- train like the flywheel (a phase per training setup, so a kept data dir reuses its models)
    t0 = time.perf_counter()
    trainer = StoreTrainer(cfg, store, ModelRegistry(store, data_dir), progress=False, say=lambda s: None)
    decode = ("gripper_dims", "gripper_closed", "gripper_open", "gripper_snap")  # inference only: not retrained
    trained = {k: v for k, v in dataclasses.asdict(cfg.idm).items() if k not in decode}
    key = json.dumps([trained, cfg.train.idm_steps, cfg.train.idm_lr, cfg.train.batch_size])
    reg = trainer.train_idm(None, f"bench-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    t_train = time.perf_counter() - t0
    idm = InverseDynamicsModel.from_pretrained(reg.path)
    for k in decode:  # this run's gripper decoding, whatever the reused checkpoint was trained with
        setattr(idm.config, k, getattr(cfg.idm, k))

    # -- held-out: in_distribution expert episodes (ceiling + DTW/MSE), and the store's held-out ids
    held = ceiling_episodes_from_store(held_store, [r.id for r in held_store.episodes(limit=None)])
    t0 = time.perf_counter()
    with torch.no_grad():
        pred = [extract_actions(idm, e, seed=k) for k, e in enumerate(held)]
    t_extract = time.perf_counter() - t0
    ceiling = idm_ceiling(idm, held, env=env, settle_steps=args.settle, actions=pred)
    replan = args.replan or cfg.policy.horizon
    with torch.no_grad():
        pred_plan = [extract_actions(idm, e, seed=k, replan_every=replan) for k, e in enumerate(held)]
    per_plan = idm_ceiling(idm, held, env=env, settle_steps=args.settle, actions=pred_plan)
    # as the planner really extracts: from a whole imagined video (here the real next frames), keeping H actions
    lookahead = args.lookahead or cfg.policy.imagine_frames - 1
    with torch.no_grad():
        pred_look = [extract_actions(idm, e, seed=k, replan_every=replan, lookahead=max(lookahead, replan))
                     for k, e in enumerate(held)]
    per_plan_look = idm_ceiling(idm, held, env=env, settle_steps=args.settle, actions=pred_look)
    # the ceiling proper: every action read off the real frames by the window that starts at it (its
    # recorded proprio, W frames ahead), replayed open loop
    w = cfg.idm.window
    with torch.no_grad():
        pred_step = [extract_actions(idm, e, seed=k, replan_every=1, lookahead=w) for k, e in enumerate(held)]
    per_step = idm_ceiling(idm, held, env=env, settle_steps=args.settle, actions=pred_step)
    # closed loop: the sim's own frame and proprio each step, the recording's next W frames as the goal
    with torch.no_grad():
        tracked = idm_ceiling(idm, held, env=env, track=w)
    tracked_rel = {f: v["relative"] for f, v in tracked["families"].items()} | {"overall": tracked["overall"]["relative"]}
    # does the IDM read the motion, or predict the next action from the state? (frozen-video control)
    reliance = {"expert": video_reliance(idm, held), "perturbed": video_reliance(idm, pert_eps) if pert_eps else None}
    settled = idm_ceiling(idm, held, env=env, settle_steps=3, actions=pred)
    control = idm_ceiling(None, held, env=env, actions=[e.actions for e in held])
    # the model-free baseline the per-step ceiling has to be read against: each step's target is the
    # *recorded* joint positions at that step (hold still where the recording is), grips snapped from the
    # recorded finger positions. Replayed open loop it follows the recording one step behind.
    recorded = [snap_grippers(torch.as_tensor(e.proprio[:-1, :16], dtype=torch.float32), cfg.idm).numpy()
                for e in held]
    control_recorded = idm_ceiling(None, held, env=env, actions=recorded)
    # how precise must an IDM be? the true actions with seeded per-step noise on the 14 arm joints
    rng = np.random.default_rng(0)
    sensitivity = {}
    for std in (0.005, 0.01, 0.02, 0.05):
        noisy = [e.actions + np.pad(rng.normal(0, std, (len(e.actions), 14)), ((0, 0), (0, 2))) for e in held]
        sensitivity[f"arm_noise_{std}_rad"] = idm_ceiling(None, held, env=env, actions=noisy)["overall"]["relative"]
    err = np.concatenate([np.abs(p - e.actions) for p, e in zip(pred, held)])  # (sum T, A)
    store_held = [r for r in rows if is_held_out(r.id)]
    sh = [store.load_arrays(r.id) for r in store_held]
    with torch.no_grad():
        sh_pred = [extract_actions(idm, e, seed=k) for k, e in enumerate(
            ceiling_episodes_from_store(store, [r.id for r in store_held]))] if store_held else []

    rel = ceiling["overall"]["relative"]
    result = {
        "bench": "idm_eval",
        "preset": args.preset,
        "threads": args.threads,
        "data": {"expert_episodes": len(experts), "expert_success": float(np.mean([r.success for r in experts])),
                 "play_episodes": len(rows) - len(experts), "trained_on": len(trainer.episodes("all")),
                 "store_held_out": len(store_held), "in_distribution_held_out": len(held)},
        "train": {"steps": cfg.train.idm_steps, "batch_size": cfg.train.batch_size, "lr": cfg.train.idm_lr,
                  "seconds": t_train, "overrides": args.override},
        "idm_config": dataclasses.asdict(cfg.idm),
        "dtw_mse_in_distribution": dtw_mse([e.actions for e in held], pred, [e.proprio[0] for e in held]),
        "dtw_mse_store_held_out": dtw_mse([a["actions"] for a in sh], sh_pred, [a["proprio"][0] for a in sh])
        if sh else None,
        "ceiling": ceiling["families"] | {"overall": ceiling["overall"]},
        "ceiling_relative": rel,  # open loop over the whole episode from the frame-0 proprio alone
        # the IDM ceiling against its target: each action extracted by the window starting at it (recorded
        # proprio there, the next W real frames), the whole sequence replayed open loop
        "ceiling_per_step": per_step["families"] | {"overall": per_step["overall"], "lookahead": w},
        "ceiling_per_step_relative": per_step["overall"]["relative"],
        "ceiling_target": 0.8,
        "ceiling_meets_target": bool(per_step["overall"]["relative"] is not None
                                     and per_step["overall"]["relative"] >= 0.8),
        "idm_mae_arm_rad_per_step": float(np.concatenate(
            [np.abs(p - e.actions)[:, :14] for p, e in zip(pred_step, held)]).mean()),
        # closed-loop tracking of the recorded video (`track_video`): success relative to the expert's
        "closed_loop_tracking_relative": tracked_rel,
        # first-action arm MAE from the real video, from a frozen one, and of holding still; on held-out expert
        # episodes and on perturbed-expert ones (states the expert never visits)
        "video_reliance": reliance,
        "ceiling_settle3_relative": settled["overall"]["relative"],
        # as the planner gets it: a fresh extraction every `replan` steps from the recorded proprio there
        "ceiling_per_plan": per_plan["families"] | {"overall": per_plan["overall"], "replan_every": replan},
        "ceiling_per_plan_relative": per_plan["overall"]["relative"],
        # the planner's case: each extraction sees `lookahead` real frames ahead, the first `replan` actions run
        "ceiling_per_plan_lookahead": per_plan_look["families"] | {"overall": per_plan_look["overall"],
                                                                   "replan_every": replan, "lookahead": lookahead},
        "ceiling_per_plan_lookahead_relative": per_plan_look["overall"]["relative"],
        "idm_mae_arm_rad_per_plan_lookahead": float(np.concatenate(
            [np.abs(p - e.actions)[:, :14] for p, e in zip(pred_look, held)]).mean()),
        "idm_mae_arm_rad_per_plan": float(np.concatenate(
            [np.abs(p - e.actions)[:, :14] for p, e in zip(pred_plan, held)]).mean()),
        "control_true_actions_relative": control["overall"]["relative"],
        "control_recorded_positions_relative": control_recorded["overall"]["relative"],
        "control_true_actions_with_arm_noise_relative": sensitivity,
        "idm_mae_arm_rad": float(err[:, :14].mean()),
        "idm_mae_gripper": float(err[:, 14:].mean()),
        "settle_steps": args.settle,
        "seconds": {"collect": t_collect, "train": t_train, "extract_per_episode": t_extract / max(len(held), 1)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
