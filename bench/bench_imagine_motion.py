"""Does the world model imagine the motion the task needs? For the first in_distribution items (the scene's
start, and the expert's state after 8 and 16 steps), the scripted expert's next 8 steps are simulated; the
IDM then reads the arm targets of the planner's first `--horizon` steps off (a) the real future and (b) each
of N futures imagined from the same frame with the scene caption. Each is scored by the mean absolute
arm-joint error (rad) against the expert's targets, and divided by the error of holding still (the measured
joints as the target): below 1 the extracted motion goes where the expert goes. `real_vs_hold` is the IDM's
own floor (a perfect world model); `imag_vs_hold` is what the planner gets from imagination, and
`imag_best_vs_hold` is the best of the N candidates (what a perfect score would pick). With a world model that
imagines the joints (`world_model.imagine_joints`), the same figures read off the imagined joints
(`IDM.extract_joints`) come as `joints_*`: `joints_real_vs_hold` reads the real future's measured joints (that
reading's floor). Prints one JSON object.

    .venv/bin/python bench/bench_imagine_motion.py --world-model CKPT --idm CKPT [--items 12] [--n 4]
        [--steps 4] [--guidance 2.0] [--horizon 4] [--plan] [--strips DIR]

With `--strips DIR`, every measured state also leaves DIR/item{i}_skip{s}.png: the real future on the top row,
the N imagined ones below, the 9 frames left to right.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-model", required=True,
                    help="a checkpoint, or several joined by commas: an ensemble, each imagining --n candidates "
                         "from the same state (their medoid is what a consensus score would execute)")
    ap.add_argument("--idm", required=True)
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--n", type=int, default=4, help="imagined candidates per state")
    ap.add_argument("--steps", type=int, default=4, help="sampling steps")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--churn", type=float, default=0.0, help="fresh noise per sampling step (0: the ODE sampler)")
    ap.add_argument("--goal-guidance", type=float, default=1.0,
                    help="classifier-free guidance on the task goals of a goal_joints world model (1: none)")
    ap.add_argument("--horizon", type=int, default=4, help="extracted steps scored (the planner executes these)")
    ap.add_argument("--frames", type=int, default=None,
                    help="frames imagined, the start frame included (default: the world model's training clip length)")
    ap.add_argument("--split", choices=("in_distribution", "train"), default="in_distribution",
                    help="in_distribution: held-out scenes; train: the scenes of the bootstrap's expert episodes "
                         "(seeds 10000 + i, the tasks the world model trained on): a gap between the two says "
                         "the model does not generalise, no gap that it does not fit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plan", action="store_true",
                    help="imagine with plan=True (a world model with an action head: decide, then draw); also "
                         "scores the head's plan itself (plan_vs_hold)")
    ap.add_argument("--skips", default="0,8,16",
                    help="the states measured, as expert steps into the episode; `hover`: the step the expert's "
                         "hand first comes within 11.5 cm of the task object (where it pauses before the descent); "
                         "`detour`: where the recovery expert takes over after its detour to a wrong grasp pose beside "
                         "the object (envs.expert.RecoveryExpert: a state like the failing planner's), the future its "
                         "correction")
    ap.add_argument("--strips", default=None, help="a folder for one PNG per state: real future over imagined ones")
    ap.add_argument("overrides", nargs="*",
                    help="Hydra overrides of the demo preset, e.g. policy.caption_upsampler=task (the captions the "
                         "world model was trained on)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from envs.backend import make_backend
    from envs.errors import EnvError
    from envs.expert import RecoveryExpert, ScriptedExpert
    from envs.goals import task_goals
    from envs.splits import ci_subset
    from flywheel.compose import compose, to_object
    from flywheel.loop import BOOTSTRAP_EXPERT_SEED
    from policies.captions import make_upsampler
    from policies.idm import InverseDynamicsModel
    from policies.imagine_then_act import frame_to_tensor
    from policies.world_model import WorldModel

    cfg = to_object(compose(["preset=demo", *args.overrides]))
    models = [WorldModel.from_pretrained(p) for p in args.world_model.split(",")]
    wm = models[0]
    if args.plan and len(models) > 1:
        raise SystemExit("--plan measures one world model's action head: give one --world-model")
    idm = InverseDynamicsModel.from_pretrained(args.idm)
    backend = make_backend("sim", cfg.backend, cfg.env)
    arm = [i for i in range(16) if i not in idm.config.gripper_dims]
    h = args.horizon
    upsampler = make_upsampler(cfg.policy.caption_upsampler, cfg.policy.upsampler_url)  # the planner's captions

    skip_list = [s if s in ("hover", "detour") else int(s) for s in args.skips.split(",")]
    rows, skips = [], []  # skips: how many expert steps into its episode each state is
    motions: list[tuple[np.ndarray, np.ndarray]] = []  # (imagined (N, h, arm), expert's (h, arm)) motion from the start
    frames = args.frames or wm.cfg.num_frames
    if frames - 1 < h:
        raise SystemExit(f"--frames {frames} imagines fewer than --horizon {h} steps")
    items = (ci_subset("in_distribution", args.items) if args.split == "in_distribution"
             else [TrainItem(BOOTSTRAP_EXPERT_SEED + i) for i in range(args.items)])
    for idx, item in enumerate(items):
        for skip in skip_list:
            obs = backend.reset(task=item.task(), seed=item.seed)
            scene = backend.scene_description()
            caption = upsampler.upsample(backend.env.task.instruction, scene)
            goal = task_goals(scene, cfg.env.control_hz)  # from the start, as the planner computes them at its reset
            expert = (RecoveryExpert if skip == "detour" else ScriptedExpert)(backend.env, seed=item.seed)
            expert.reset(backend.env.task)
            before = expert.takeover_step if skip == "detour" else HOVER_MAX if skip == "hover" else skip
            try:
                for _ in range(before):
                    if skip == "hover" and hand_to_object(backend.env, expert) < HOVER_M:
                        break
                    obs = backend.step(np.asarray(expert.act(obs), np.float32)[None]).observations[-1]
                else:
                    if skip == "hover":  # never came near (the task has no object to reach)
                        continue
                start, real, targets, real_q = obs, [obs["rgb"]], [], [obs["proprio"][:16]]
                for _ in range(8):
                    a = np.asarray(expert.act(obs), np.float32)
                    targets.append(a)
                    obs = backend.step(a[None]).observations[-1]
                    real.append(obs["rgb"])
                    real_q.append(obs["proprio"][:16])
            except EnvError:  # the expert finished before this state: nothing left to imagine
                continue
            want = np.stack(targets)[:h, arm]
            proprio = torch.from_numpy(start["proprio"].astype(np.float32))

            def error(actions: np.ndarray, want: np.ndarray = want) -> float:
                return float(np.abs(actions[:h, arm] - want).mean())

            real_err = error(idm.extract(torch.stack([frame_to_tensor(f) for f in real]), proprio, seed=0).actions.numpy())
            joint_model = bool(getattr(wm.cfg, "imagine_joints", False))
            drawn = [m.imagine_joints(frame_to_tensor(start["rgb"]), caption, n=args.n, steps=args.steps,
                                      guidance=args.guidance, seed=idx, num_frames=frames, plan=args.plan,
                                      pose=proprio[:16] if args.plan or joint_model else None, churn=args.churn,
                                      goal=goal if getattr(m.cfg, "goal_joints", False) else None,
                                      goal_guidance=args.goal_guidance)
                     for m in models]
            videos = torch.cat([v for v, _ in drawn])
            joints = None if drawn[0][1] is None else torch.cat([j for _, j in drawn])
            imag = [error(idm.extract(v, proprio, seed=0).actions.numpy()) for v in videos]
            extra = {}
            if joints is not None:
                acts = np.stack([idm.extract_joints(j, proprio).actions.numpy() for j in joints])  # (N, T-1, A)
                from_joints = [error(a) for a in acts]
                extra = {"joints_real": error(idm.extract_joints(torch.from_numpy(np.stack(real_q)), proprio).actions.numpy()),
                         "joints_imag": float(np.mean(from_joints)), "joints_imag_best": float(np.min(from_joints)),
                         # how far the candidates' targets lie from one another: what best-of-N can choose between
                         "joints_spread": float(acts[:, :h][..., arm].std(0).mean()),
                         # the candidate closest to the others (what a consensus score picks), and their average
                         "joints_medoid": from_joints[medoid(acts[:, :h][..., arm])],
                         "joints_average": error(acts.mean(0))}
                q0 = start["proprio"][:16][arm]
                motions.append((acts[:, :h][..., arm] - q0, want - q0))
                extra.update(state_motion(*motions[-1]))
                # the part of that error on the arm the expert moves less (the idle one: 7 of the 14 arm joints)
                moved = np.abs(want - q0)
                idle = slice(7, 14) if moved[:, :7].sum() >= moved[:, 7:].sum() else slice(0, 7)
                extra["joints_imag_idle"] = float(np.mean([np.abs(a[:h, arm][:, idle] - want[:, idle]).mean() / 2
                                                           for a in acts]))
            if args.plan:
                plan = wm.plan_actions(frame_to_tensor(start["rgb"]), caption, proprio[:16], n=args.n, seed=idx,
                                       num_frames=frames)
                extra["plan"] = float(np.mean([error(p.numpy()) for p in plan]))
            if args.strips:
                save_strip(Path(args.strips) / f"item{idx}_skip{skip}.png", np.stack(real), videos)
            rows.append({"hold": float(np.abs(start["proprio"][:16][arm][None] - want).mean()), "real": real_err,
                         "imag": float(np.mean(imag)), "imag_best": float(np.min(imag)), **extra})
            skips.append(skip)
    if hasattr(backend, "close"):
        backend.close()
    if not rows:
        raise SystemExit("no state to measure: every expert episode ended first")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if not k.startswith("motion_")}
    print(json.dumps({
        **motion_fit(motions, mean["hold"]),
        "states": len(rows), "items": args.items, "n": args.n, "models": len(models), "steps": args.steps, "guidance": args.guidance,
        "churn": args.churn, "goal_guidance": args.goal_guidance, "split": args.split, "frames": frames,
        "horizon": h, "arm_error_rad": {k: round(v, 4) for k, v in mean.items()},
        "real_vs_hold": round(mean["real"] / mean["hold"], 3), "imag_vs_hold": round(mean["imag"] / mean["hold"], 3),
        "imag_best_vs_hold": round(mean["imag_best"] / mean["hold"], 3),
        **({"plan_vs_hold": round(mean["plan"] / mean["hold"], 3)} if args.plan else {}), "plan": args.plan,
        **{f"{k}_vs_hold": round(mean[k] / mean["hold"], 3) for k in ("joints_real", "joints_imag", "joints_imag_best", "joints_spread",
                                                   "joints_medoid", "joints_average", "joints_imag_idle")
           if k in mean},
        "by_phase": by_phase(rows, skips),
        "world_model": args.world_model, "idm": args.idm, "overrides": args.overrides,
    }))


HOVER_M, HOVER_MAX = 0.115, 40  # `--skips hover`: within 11.5 cm, looked for over at most 40 expert steps


def hand_to_object(env, expert) -> float:
    """The distance from the expert's nearest commanded hand to the task's object (inf without one): where the
    expert means the hand to be, not where it has got to (`flywheel.evaluation.progress.hand_distances`), so the
    hover is the plateau of its plan."""
    name = (env.task.objects or {}).get("object")
    if not name or not getattr(expert, "cmd", None):
        return float("inf")
    return min(float(np.linalg.norm(pos - env.object_pos(name))) for pos, _ in expert.cmd.values())


def by_phase(rows: list[dict], skips: list) -> dict:
    """The imagined joints' error over holding still's for the states at each depth into the expert's episode
    (0: the arm at rest before the reach; 8, 16: mid-reach, near the grasp): where a model's error lies."""
    out = {}
    for skip in sorted(set(skips), key=str):
        sel = [r for r, s in zip(rows, skips) if s == skip]
        hold = float(np.mean([r["hold"] for r in sel]))
        out[str(skip)] = {"states": len(sel), "hold_rad": round(hold, 4),
                          **({"joints_imag_vs_hold": round(float(np.mean([r["joints_imag"] for r in sel])) / hold, 3)}
                             if "joints_imag" in sel[0] else {}),
                          **({"idle_arm_share": round(float(np.mean([r["joints_imag_idle"] for r in sel]))
                                                      / max(float(np.mean([r["joints_imag"] for r in sel])), 1e-12), 3)}
                             if "joints_imag_idle" in sel[0] else {}),
                          # the imagined motion's size over the expert's and its direction (cosine), at this depth
                          **({"motion_ratio": round(float(np.sum([r["motion_size"] for r in sel]))
                                                    / max(float(np.sum([r["motion_want"] for r in sel])), 1e-12), 3),
                              "motion_cosine": round(float(np.mean([r["motion_cosine"] for r in sel])), 3)}
                             if "motion_size" in sel[0] else {}),
                          "imag_vs_hold": round(float(np.mean([r["imag"] for r in sel])) / hold, 3)}
    return out


class TrainItem:
    """A bootstrap expert episode's scene: `reset(seed=s)` draws the training task from the seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def task(self) -> None:
        return None


def cosines(imagined: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Each candidate's cosine `(N,)` between its imagined motion `(N, ...)` and the expert's `want`."""
    flat, want = imagined.reshape(len(imagined), -1), want.reshape(-1)
    return flat @ want / (np.linalg.norm(flat, axis=1) * np.linalg.norm(want) + 1e-12)


def state_motion(imagined: np.ndarray, want: np.ndarray) -> dict:
    """One state's figures for `by_phase`: mean |imagined motion|, mean |expert's|, the candidates' mean cosine."""
    return {"motion_size": float(np.abs(imagined).mean()), "motion_want": float(np.abs(want).mean()),
            "motion_cosine": float(cosines(imagined, want).mean())}


def motion_fit(motions: list[tuple[np.ndarray, np.ndarray]], hold: float) -> dict:
    """How the imagined joints' motion (from the start pose, first h targets) compares with the expert's:
    `joints_motion_ratio` is its size over the expert's (< 1: too little motion), `joints_cosine` the mean cosine
    between the two (1: the right direction), `joints_gain` the one factor that best scales every imagined
    motion onto the expert's (least squares, fitted on these states) and `joints_at_gain_vs_hold` the error left
    after it, against holding still: how much a calibrated gain on the imagined motion could recover."""
    if not motions:
        return {}
    m = np.concatenate([mi.reshape(len(mi), -1) for mi, _ in motions], axis=1)  # (N, states * h * arm)
    r = np.concatenate([ri.reshape(-1) for _, ri in motions])
    cos = []
    for mi, ri in motions:
        cos += list(cosines(mi, ri))
    gain = float((m @ r).sum() / max(float((m * m).sum()), 1e-12))
    at_gain = float(np.abs(gain * m - r[None]).mean())
    return {"joints_motion_ratio": round(float(np.abs(m).mean() / max(np.abs(r).mean(), 1e-12)), 3),
            "joints_cosine": round(float(np.mean(cos)), 3), "joints_gain": round(gain, 3),
            "joints_at_gain_vs_hold": round(at_gain / hold, 3)}


def medoid(acts: np.ndarray) -> int:
    """The index of the candidate `(N, ...)` with the least summed distance to the others."""
    flat = acts.reshape(len(acts), -1)
    return int(np.abs(flat[:, None] - flat[None]).mean(-1).sum(1).argmin())


def save_strip(path: Path, real: np.ndarray, videos: torch.Tensor) -> None:
    """Real frames `(T, H, W, 3)` uint8 on the top row, each imagined video `(T, 3, H, W)` in [0, 1] below."""
    from PIL import Image

    imagined = (videos.clamp(0, 1).permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8)
    rows = [real] + list(imagined)
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


if __name__ == "__main__":
    main()
