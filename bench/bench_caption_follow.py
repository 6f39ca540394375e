"""Does the world model do what its caption says? The task caption (`policy.caption_upsampler=task`) names the
hand that reaches ("The robot reaches with its left hand for the red cube ..."). For the first in_distribution
items whose caption names a hand, N futures are imagined from the start frame with (a) the caption as given,
(b) the same caption with "left hand" and "right hand" swapped, (c) the empty caption; same frame, pose and
noise. Each candidate's motion per arm is read off its imagined joints (a world model with
`world_model.imagine_joints`), else off the targets the IDM reads from its frames: the summed absolute change
of that arm's 7 joints over the clip (rad). A candidate follows its caption when the named arm moves more.

`follow_given` and `follow_swapped` are the fractions of candidates that follow (a) and (b). A model that
ignores its caption moves the same arm under both, so the two sum to about 1; one that follows it has both
near 1. `caption_effect_rad` is the mean absolute change of each arm's motion between (a) and (b) (0: the
caption does nothing). `expert_agrees` is how often the expert's own next 8 steps move the named arm more
(the caption's hand is derived from the scene, as the expert's choice of arm is). Prints one JSON object.

    .venv/bin/python bench/bench_caption_follow.py --world-model CKPT [--idm CKPT] [--items 12] [--n 4]
        [--steps 4] [--guidance 2.0] [overrides...]
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

ARMS = {"left": slice(0, 7), "right": slice(7, 14)}


def swap_hands(caption: str) -> str:
    """The caption with "left hand" and "right hand" exchanged."""
    return caption.replace("left hand", "\0").replace("right hand", "left hand").replace("\0", "right hand")


def named_hand(caption: str) -> str | None:
    """The hand a task caption says reaches, or None if it names neither or both."""
    named = [side for side in ARMS if f"{side} hand" in caption]
    return named[0] if len(named) == 1 else None


def arm_motion(q: np.ndarray) -> dict[str, float]:
    """Summed absolute change of each arm's joints between the first and last row of `q (T, >=14)`."""
    return {side: float(np.abs(q[-1, sl] - q[0, sl]).sum()) for side, sl in ARMS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--idm", default=None, help="reads a frames-only world model's motion (not needed with joints)")
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--n", type=int, default=4, help="imagined candidates per caption")
    ap.add_argument("--steps", type=int, default=4, help="sampling steps")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the demo preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from envs.backend import make_backend
    from envs.errors import EnvError
    from envs.expert import ScriptedExpert
    from envs.splits import ci_subset
    from flywheel.compose import compose, to_object
    from policies.captions import make_upsampler
    from policies.imagine_then_act import frame_to_tensor
    from policies.world_model import WorldModel

    cfg = to_object(compose(["preset=demo", "policy.caption_upsampler=task", *args.overrides]))
    wm = WorldModel.from_pretrained(args.world_model)
    joints_model = bool(wm.cfg.imagine_joints)
    idm = None
    if not joints_model:
        if not args.idm:
            raise SystemExit("this world model does not imagine joints: give --idm to read its frames")
        from policies.idm import InverseDynamicsModel

        idm = InverseDynamicsModel.from_pretrained(args.idm)
    backend = make_backend("sim", cfg.backend, cfg.env)
    upsampler = make_upsampler(cfg.policy.caption_upsampler, cfg.policy.upsampler_url)

    def motions(frame: torch.Tensor, caption: str, pose: torch.Tensor, seed: int) -> list[dict[str, float]]:
        videos, joints = wm.imagine_joints(frame, caption, n=args.n, steps=args.steps, guidance=args.guidance,
                                           seed=seed, pose=pose if joints_model else None)
        if joints is not None:
            return [arm_motion(j.numpy()) for j in joints]
        reads = [idm.extract(v, pose, seed=0).actions.numpy() for v in videos]
        return [arm_motion(np.concatenate([pose[None, :16].numpy(), a])) for a in reads]

    rows = []
    for idx, item in enumerate(ci_subset("in_distribution", args.items)):
        obs = backend.reset(task=item.task(), seed=item.seed)
        caption = upsampler.upsample(item.instruction, backend.scene_description())
        hand = named_hand(caption)
        if hand is None:
            continue
        other = "right" if hand == "left" else "left"
        expert = ScriptedExpert(backend.env, seed=item.seed)
        expert.reset(backend.env.task)
        start, qs = obs, [obs["proprio"][:16]]
        try:
            for _ in range(8):
                obs = backend.step(np.asarray(expert.act(obs), np.float32)[None]).observations[-1]
                qs.append(obs["proprio"][:16])
        except EnvError:
            pass
        real = arm_motion(np.stack(qs))
        frame = frame_to_tensor(start["rgb"])
        pose = torch.from_numpy(start["proprio"][:16].astype(np.float32))
        given = motions(frame, caption, pose, idx)
        swapped = motions(frame, swap_hands(caption), pose, idx)
        empty = motions(frame, "", pose, idx)
        rows.append({
            "item": idx, "hand": hand, "expert_agrees": real[hand] > real[other],
            "follow_given": float(np.mean([m[hand] > m[other] for m in given])),
            "follow_swapped": float(np.mean([m[other] > m[hand] for m in swapped])),
            "effect": float(np.mean([abs(g[s] - w[s]) for g, w in zip(given, swapped) for s in ARMS])),
            "given_rad": {s: round(float(np.mean([m[s] for m in given])), 3) for s in ARMS},
            "swapped_rad": {s: round(float(np.mean([m[s] for m in swapped])), 3) for s in ARMS},
            "empty_rad": {s: round(float(np.mean([m[s] for m in empty])), 3) for s in ARMS},
            "expert_rad": {s: round(real[s], 3) for s in ARMS},
        })
    if hasattr(backend, "close"):
        backend.close()
    if not rows:
        raise SystemExit("no item's caption names a hand: use the task caption upsampler")
    print(json.dumps({
        "items": len(rows), "n": args.n, "steps": args.steps, "guidance": args.guidance,
        "follow_given": round(float(np.mean([r["follow_given"] for r in rows])), 3),
        "follow_swapped": round(float(np.mean([r["follow_swapped"] for r in rows])), 3),
        "caption_effect_rad": round(float(np.mean([r["effect"] for r in rows])), 3),
        "expert_agrees": round(float(np.mean([r["expert_agrees"] for r in rows])), 3),
        "read_from": "joints" if joints_model else "frames", "world_model": args.world_model,
        "overrides": args.overrides, "per_item": rows,
    }))


if __name__ == "__main__":
    main()
