"""The flywheel end to end: `flywheel run` (demo preset by default) in a fresh data directory, then one JSON
object with its wall time, peak memory (this process tree), champion success per iteration and split with
95% CIs, promotions, and the world-model evaluator's agreement. Targets: <= 15 min and < 4 GiB on 2 cores.

    python bench/bench_flywheel.py [--preset demo] [--data-dir DIR] [overrides...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--data-dir", default=None, help="default: a new temporary directory")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    data = Path(args.data_dir or tempfile.mkdtemp(prefix="bench_flywheel_")) / "data"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flywheel.cli", "run", f"preset={args.preset}", f"data_dir={data}",
                           *args.overrides], capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        print(json.dumps({"error": proc.stderr.strip().splitlines()[-1:] or proc.stdout[-500:], "wall_s": wall}))
        sys.exit(1)
    report = json.loads((data / "reports" / "report.json").read_text())
    per_iter = [{"iteration": h["iteration"], "champion": h.get("champion"), "promoted": h.get("promoted"),
                 "reason": h.get("reason"), "rollout_success": h.get("rollout_success"),
                 "success": {s: {k: round(v[k], 3) for k in ("rate", "ci_low", "ci_high")} | {"n": v["n"]}
                             for s, v in h.get("champion_success", {}).items()}}
                for h in report["history"]]
    ev = report.get("world_model_evaluator") or {}
    print(json.dumps({
        "preset": args.preset, "data_dir": str(data), "wall_s": round(wall, 1),
        "wall_target_s": 900, "peak_rss_mib": round(report.get("peak_rss_mib", 0), 1), "memory_target_mib": 4096,
        "meets_targets": wall <= 900 and report.get("peak_rss_mib", 0) < 4096,
        "iterations": per_iter, "promotions": sum(1 for h in report["history"][1:] if h.get("promoted")),
        "verdict": report.get("verdict"),
        "world_model_evaluator": {k: ev.get(k) for k in ("pearson_r", "pairwise_accuracy", "pairs", "n_policies")},
    }))


if __name__ == "__main__":
    main()
