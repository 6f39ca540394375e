"""Episodes per minute with the scripted expert on the `sim` queue, with 1 and 2 worker processes,
on the embedded broker and store (the machine this runs on has 2 cores).

    .venv/bin/python bench/bench_episodes.py [--episodes 8] [--max-steps 60]

Timed from the enqueue to the last run finishing, workers already started (and warmed by one episode
each). Prints one JSON object; `ratio` = 2 processes / 1 process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")


def episodes_per_minute(n_procs: int, episodes: int, max_steps: int, root: Path) -> dict:
    from flywheel.compose import compose
    from workers.pool import WorkerPool

    cfg = compose([f"data_dir={root / f'w{n_procs}'}", "policy=scripted_expert", f"env.max_steps={max_steps}"])
    with WorkerPool(cfg, n=n_procs, queues=["sim"], sweeper=False) as pool:
        sched = pool.scheduler
        sched.wait(sched.enqueue({"family": "pick", "seed": 1, "attempts": n_procs}), timeout=600)  # warm-up
        t0 = time.perf_counter()
        ids = sched.enqueue({"family": "pick", "seed": 100, "attempts": episodes})
        rows = sched.wait(ids, timeout=1800)
        elapsed = time.perf_counter() - t0
    ok = sum(r.state == "succeeded" for r in rows)
    steps = sum((r.result or {}).get("length", 0) for r in rows)
    return {"episodes_per_min": round(60 * ok / elapsed, 2), "seconds": round(elapsed, 1), "succeeded": ok,
            "env_steps": steps, "task_success": sum(bool((r.result or {}).get("success")) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-episodes-") as tmp:
        one = episodes_per_minute(1, args.episodes, args.max_steps, Path(tmp))
        two = episodes_per_minute(2, args.episodes, args.max_steps, Path(tmp))
    print(json.dumps({"bench": "episodes", "policy": "scripted_expert", "broker": "embedded",
                      "episodes": args.episodes, "max_steps": args.max_steps, "workers_1": one, "workers_2": two,
                      "ratio": round(two["episodes_per_min"] / one["episodes_per_min"], 3)}))


if __name__ == "__main__":
    main()
