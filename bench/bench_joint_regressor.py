"""How well can anything predict the expert's next joints from what the world model is given? A direct regressor
(no diffusion): a small CNN on the start frame with the standardised joint planes, the world model's small text
encoder on the caption (mean-pooled) and an MLP, trained with MSE on where the joints go over the next
`frames - 1` frames, on the store's successful, not held-out expert episodes (30% episode-start clips, as
`train.wm_start_clips`), batch 8, AdamW. It is scored as the world model is by `bench_imagine_motion.py`: the
mean absolute arm-joint error over the next `frames - 1` frames divided by holding still's, on the training
clips and on the held-out expert episodes' clips (each split also on its episode-start clips alone). With
`--world-model CKPT` the world model's imagined joints (one candidate, 8 steps) are scored on the same
held-out clips. With `--privileged` the regressor is also given what neither the caption nor a 64x64 frame says
well: the task object's yaw (sine and cosine of 1, 2 and 4 times it: a cube looks the same every quarter turn)
and its table position at the episode's start, read by re-simulating each episode's scene from its seed (the
bootstrap's expert episodes draw their task from it). How far that lowers the held-out error is what a caption
or a camera that conveyed the object's pose could buy.

A regressor that fits its training clips but not the held-out ones says the store is too small for the
mapping, whatever model learns it; one that fits neither, that the steps are too few. Prints one JSON object.

    .venv/bin/python bench/bench_joint_regressor.py --data-dir DIR/data --steps 20000 [--world-model CKPT]
        [policy.caption_upsampler=task ...]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ARM = 14  # the 7 + 7 arm joints (the grippers are left out, as in bench_imagine_motion.py)


class JointRegressor(nn.Module):
    """Start frame + joints + caption -> the next `horizon` joint positions as changes in std units."""

    def __init__(self, text_encoder: nn.Module, text_dim: int, mean: torch.Tensor, std: torch.Tensor,
                 horizon: int, action_dim: int = 16, extra: int = 0) -> None:
        super().__init__()
        ch = [3 + action_dim, 32, 64, 96, 128]
        layers: list[nn.Module] = []
        for i in range(4):  # 64 -> 4: 128 x 4 x 4 features
            layers += [nn.Conv2d(ch[i], ch[i + 1], 3, 2, 1), nn.GroupNorm(8, ch[i + 1]), nn.SiLU()]
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.text = text_encoder
        self.head = nn.Sequential(nn.Linear(128 * 16 + text_dim + action_dim + extra, 512), nn.SiLU(), nn.Linear(512, 512),
                                  nn.SiLU(), nn.Linear(512, horizon * action_dim))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.horizon, self.action_dim = horizon, action_dim

    def forward(self, frames: torch.Tensor, pose: torch.Tensor, captions: list[str],
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W), (B, A) [, (B, extra)] -> (B, horizon, A) standardised changes from `pose`."""
        q = (pose - self.mean) / self.std
        x = torch.cat([frames, q[:, :, None, None].expand(-1, -1, *frames.shape[-2:])], 1)
        hidden, mask = self.text(captions)
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        feats = [self.cnn(x).flatten(1), pooled, q] + ([] if extra is None else [extra])
        out = self.head(torch.cat(feats, 1))
        return out.view(-1, self.horizon, self.action_dim)

    def predict(self, frame: torch.Tensor, pose: torch.Tensor, caption: str,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """One clip: (3, H, W), (A,) -> the next `horizon` joint positions (horizon, A)."""
        return pose + self(frame[None], pose[None], [caption], None if extra is None else extra[None])[0] * self.std


def object_pose_features(store, episodes, cfg) -> dict[int, torch.Tensor]:
    """Episode id -> (8,) the task object's yaw (sin, cos of 1, 2, 4 x yaw) and x, y (x5) at the episode's start,
    from its scene re-simulated with the episode's seed."""
    from envs.backend import make_backend

    backend = make_backend("sim", cfg.backend, cfg.env)
    out = {}
    try:
        for ep in episodes:
            row = store.get_episode(ep.id)
            backend.reset(task=None, seed=row.seed)
            if backend.env.task.instruction != row.instruction:
                raise SystemExit(f"episode {ep.id}: its seed {row.seed} draws {backend.env.task.instruction!r}, not "
                                 f"{row.instruction!r} (--privileged needs the bootstrap's expert episodes)")
            name = (row.task or {}).get("objects", {}).get("object")
            obj = next(o for o in backend.scene_description()["objects"] if o["name"] == name)
            yaw, pos = np.radians(obj["yaw_deg"]), obj["position"]
            out[ep.id] = torch.tensor([f(k * yaw) for k in (1, 2, 4) for f in (np.sin, np.cos)]
                                      + [5 * pos[0], 5 * pos[1]], dtype=torch.float32)
    finally:
        backend.close()
    return out


def error_vs_hold(predict, clips: list[dict]) -> dict:
    """Mean absolute arm-joint error of `predict(item) -> (T-1, A)` over the clips, against holding still's."""
    err, hold = [], []
    for item in clips:
        q = item["poses"]
        err.append(float((predict(item)[:, :ARM] - q[1:, :ARM]).abs().mean()))
        hold.append(float((q[:1, :ARM] - q[1:, :ARM]).abs().mean()))
    return {"vs_hold": round(float(np.mean(err) / max(np.mean(hold), 1e-12)), 3), "clips": len(clips)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="the store's data_dir (the one holding store.sqlite)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--frames", type=int, default=5, help="clip frames, the start frame included")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-clips", type=int, default=300, help="at most this many clips scored per split")
    ap.add_argument("--world-model", default=None, help="also score this world model's imagined joints")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--privileged", nargs="?", const="all", default=None, choices=("all", "yaw", "position"),
                    help="also give the regressor the task object's true yaw and position (re-simulated); "
                         "`yaw` or `position`: only that part")
    ap.add_argument("--text-tokens", type=int, default=80, help="the text encoder's length (task_pose: 96)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the demo preset")
    args = ap.parse_args()
    if args.steps < 1 or args.frames < 2:
        raise SystemExit("--steps must be >= 1 and --frames >= 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    from db.store import ExperienceStore
    from flywheel.compose import compose, to_object
    from flywheel.data import MIXTURE_SOURCES, ClipDataset, EpisodeFilter, is_held_out, load_episodes
    from policies.world_model.configuration_world_model import WorldModelConfig
    from policies.world_model.modeling_text_encoder import SmallTextEncoder

    cfg = to_object(compose(["preset=demo", f"data_dir={args.data_dir}", *args.overrides]))
    with ExperienceStore.from_config(cfg.db, cfg.data_path) as store:
        experts = [e for e in load_episodes(store, EpisodeFilter(limit=None, **MIXTURE_SOURCES["expert"]))
                   if len(e.actions)]
        extra = object_pose_features(store, experts, cfg) if args.privileged else None
    if extra and args.privileged != "all":  # the 6 yaw features, or the 2 position ones
        part = slice(0, 6) if args.privileged == "yaw" else slice(6, 8)
        extra = {k: v[part] for k, v in extra.items()}
    train_eps = [e for e in experts if not is_held_out(e.id) and e.success]
    held_eps = [e for e in experts if is_held_out(e.id)]
    if not train_eps or not held_eps:
        raise SystemExit(f"{args.data_dir}: needs successful training and held-out expert episodes "
                         f"(has {len(train_eps)} and {len(held_eps)})")
    clips, starts = ClipDataset(train_eps, args.frames, stride=2), ClipDataset(train_eps, args.frames, starts_only=True)
    q = np.concatenate([e.proprio[:, :16] for e in train_eps])
    text_cfg = WorldModelConfig(max_text_tokens=args.text_tokens)
    model = JointRegressor(SmallTextEncoder(text_cfg), text_cfg.text_dim, torch.tensor(q.mean(0)),
                           torch.tensor(np.maximum(q.std(0), 1e-3)), args.frames - 1, extra=len(next(iter(extra.values()))) if extra else 0)

    def clip(ds, i: int) -> dict:  # a clip, with its episode's privileged features under "extra"
        item = ds[i]
        return item | ({"extra": extra[ds.episodes[ds.index[i][0]].id]} if extra else {})

    opt = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=0.01)
    t0, losses = time.perf_counter(), []
    for step in range(args.steps):
        for g in opt.param_groups:  # a cool-down over the last 10%, as the world model's recipe
            g["lr"] = args.lr if step < 0.9 * args.steps else 0.4 * args.lr
        items = [clip(starts, rng.randrange(len(starts))) if rng.random() < 0.3 else clip(clips, rng.randrange(len(clips)))
                 for _ in range(8)]
        poses = torch.stack([it["poses"] for it in items])
        pred = model(torch.stack([it["video"][0] for it in items]), poses[:, 0], [it["caption"] for it in items],
                     torch.stack([it["extra"] for it in items]) if extra else None)
        loss = F.mse_loss(pred, (poses[:, 1:] - poses[:, :1]) / model.std)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0

    def sample(ds, n):
        idx = sorted(random.Random(1).sample(range(len(ds)), min(n, len(ds))))
        return [clip(ds, i) for i in idx]

    held, held_starts = ClipDataset(held_eps, args.frames, stride=2), ClipDataset(held_eps, args.frames, starts_only=True)
    eval_sets = {"train": sample(clips, args.eval_clips), "train_starts": sample(starts, args.eval_clips),
                 "held_out": sample(held, args.eval_clips), "held_out_starts": sample(held_starts, args.eval_clips)}
    model.eval()
    out = {"bench": "joint_regressor", "data_dir": args.data_dir, "steps": args.steps, "frames": args.frames,
           "privileged": args.privileged, "text_tokens": args.text_tokens, "train_episodes": len(train_eps), "held_out_episodes": len(held_eps),
           "loss_first_500": round(float(np.mean(losses[:500])), 4), "loss_last_500": round(float(np.mean(losses[-500:])), 4),
           "train_s": round(train_s, 1)}
    with torch.no_grad():
        out["regressor"] = {k: error_vs_hold(lambda it: model.predict(it["video"][0], it["poses"][0], it["caption"], it.get("extra")), v)
                            for k, v in eval_sets.items()}
        if args.world_model:
            from policies.world_model import WorldModel

            wm = WorldModel.from_pretrained(args.world_model)

            def imagined(it):
                _, joints = wm.imagine_joints(it["video"][0], it["caption"], n=1, steps=8, guidance=cfg.policy.guidance,
                                              seed=0, num_frames=args.frames, pose=it["poses"][0])
                return joints[0, 1:]

            out["world_model"] = {"path": args.world_model, "guidance": cfg.policy.guidance,
                                  **{k: error_vs_hold(imagined, eval_sets[k]) for k in ("held_out", "held_out_starts")}}
    out["overrides"] = args.overrides
    print(json.dumps(out))


if __name__ == "__main__":
    main()
