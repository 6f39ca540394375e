"""Can the world model's architecture follow one word of a long caption? A synthetic check, no store needed.

Each clip starts from a random frame and brightens one half of it, the half its caption names: "pick up the
<8 random words>. The robot reaches with its left hand for the thing. <40 words shared by every caption>". The
start frame says nothing about which half; only the one word does, as in the task captions, where one word of
about 60 says which hand reaches. With `--patch K` only a KxK square in the middle of that half brightens (an
arm is a small part of the frame). With `--rest R` only that share of the training clips start at rest; the
others start mid-motion, their start frame already showing the side (test clips always start at rest). A
tiny world model (the demo's widths, 16x16 frames, 5 frames, imagine mode only) is trained from scratch for
`--steps` steps, with the caption only through Wan's cross-attention and with `world_model.caption_adaln`
(the pooled caption added to the timestep embedding; pooled by the masked mean, or by a learned query's
attention with `caption_pool=attention`), same seed and data. Then for `--items` fresh clips per side (new
start frames and object words, the same shared words) it imagines `--n` futures and counts those in which
the named region brightens more. `follow` near 1: the model does what the
caption says; near 0.5: it ignores the word. Prints one JSON object.

    .venv/bin/python bench/bench_caption_synthetic.py [--steps 1500] [--seed 0] [--items 12] [--n 2]
        [--variants a,b] [--flow-shift 3.0] [--patch 0] [--rest 1.0]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

S, T = 16, 5  # frame side, frames per clip
SIDES = ("left", "right")
# how the caption reaches the model: (caption_adaln, caption_pool)
VARIANTS = {"cross_attention_only": (False, "mean"), "caption_adaln": (True, "mean"),
            "caption_adaln_attention": (True, "attention")}


class Clips:
    """Seeded synthetic clips: random start frame; the named side's region brightens by 0.1 per frame."""

    def __init__(self, seed: int, boilerplate: str | None = None, patch: int = 0) -> None:
        self.patch = patch
        self.rng = random.Random(seed)
        self.g = torch.Generator().manual_seed(seed)
        self.words = [f"w{i}" for i in range(200)]
        # the shared words are the training clips' for the test clips too, as the upsampler's are at test time
        self.boilerplate = boilerplate or " ".join(self.rng.choice(self.words) for _ in range(40))

    def region(self, side: str) -> tuple[slice, slice]:
        """The rows and columns that brighten: the named half, or (`patch` > 0) a patch x patch square in its
        middle (an arm is a small part of the frame)."""
        if not self.patch:
            return slice(0, S), slice(0, S // 2) if side == "left" else slice(S // 2, S)
        r0, c0 = S // 2 - self.patch // 2, (S // 4 if side == "left" else 3 * S // 4) - self.patch // 2
        return slice(r0, r0 + self.patch), slice(c0, c0 + self.patch)

    def clip(self, side: str, moving: bool = False) -> tuple[torch.Tensor, str]:
        """`moving`: the clip starts mid-motion (its region already 0.1-0.3 brighter on the start frame, which
        then shows the side), as a clip from the middle of an episode shows the arm already moving."""
        start = torch.rand(3, S, S, generator=self.g) * 0.5
        video = start.expand(T, 3, S, S).clone()
        rows, cols = self.region(side)
        lead = self.rng.randint(1, 3) if moving else 0
        for t in range(T):
            video[t, :, rows, cols] += 0.1 * (t + lead)
        obj = " ".join(self.rng.choice(self.words) for _ in range(8))
        caption = f"pick up the {obj}. The robot reaches with its {side} hand for the thing. {self.boilerplate}"
        return video.clamp(0, 1), caption


def run(adaln: bool, pool: str, args: argparse.Namespace) -> dict:
    from policies.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(args.seed)
    cfg = WorldModelConfig(image_size=S, num_frames=T, patch_size=(1, 4, 4), num_layers=2, num_attention_heads=2,
                           attention_head_dim=32, ffn_dim=256, max_text_tokens=80, caption_adaln=adaln,
                           caption_pool=pool, flow_shift=args.flow_shift,
                           prediction="sample", action_dropout=1.0)
    model = WorldModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = Clips(args.seed, patch=args.patch)
    t0, losses = time.perf_counter(), []
    for _ in range(args.steps):
        clips = [data.clip(data.rng.choice(SIDES), args.rest < 1 and data.rng.random() >= args.rest)
                 for _ in range(args.batch)]
        batch = {"video": torch.stack([v for v, _ in clips]), "caption": [c for _, c in clips], "actions": None,
                 "success": torch.full((args.batch,), float("nan"))}
        loss, logs = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss_fm"])
    train_s = time.perf_counter() - t0
    model.eval()
    test = Clips(args.seed + 1000, data.boilerplate, args.patch)
    follow = {}
    for side in SIDES:
        hits = []
        for i in range(args.items):
            video, caption = test.clip(side)
            with torch.no_grad():
                out = model.imagine(video[0], caption, n=args.n, steps=8, seed=i)
            gain = (out[:, -1] - out[:, 0]).mean(1)  # (n, H, W): brightening per pixel
            left, right = (gain[:, r, c].mean(dim=(1, 2)) for r, c in map(test.region, SIDES))
            hits += ((left > right) == (side == "left")).tolist()
        follow[side] = sum(hits) / len(hits)
    return {"follow": round((follow["left"] + follow["right"]) / 2, 3),
            "follow_per_side": {k: round(v, 3) for k, v in follow.items()},
            "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 5), "train_s": round(train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--items", type=int, default=12, help="test clips per side")
    ap.add_argument("--n", type=int, default=2, help="imagined futures per test clip")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flow-shift", type=float, default=3.0,
                    help="world_model.flow_shift, for training and sampling (the demo's: 3)")
    ap.add_argument("--rest", type=float, default=1.0,
                    help="the share of training clips that start at rest (the rest start mid-motion; test: at rest)")
    ap.add_argument("--patch", type=int, default=0,
                    help="> 0: only a square of this side in the middle of the named half brightens (0: the half)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"steps": args.steps, "seed": args.seed, "items_per_side": args.items, "n": args.n,
           "flow_shift": args.flow_shift, "patch": args.patch, "rest": args.rest}
    for name in args.variants.split(","):
        if name not in VARIANTS:
            ap.error(f"--variants: unknown {name!r}, choose from {', '.join(VARIANTS)}")
        out[name] = run(*VARIANTS[name], args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
