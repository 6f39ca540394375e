"""`flywheel bench`: run the benchmarks in bench/ (each prints one JSON object) and collect their output."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run benchmarks from bench/ and print their JSON",
                       description="Run bench/bench_<name>.py for each NAME (all with --all) and print one JSON "
                       "object per benchmark. Arguments after -- go to every benchmark.")
    p.add_argument("names", nargs="*", help="benchmark names, e.g. store env neo (see --list)")
    p.add_argument("--list", action="store_true", help="list the benchmarks")
    p.add_argument("--all", action="store_true", help="run every benchmark (long)")
    p.set_defaults(func=run)


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def run(args: argparse.Namespace, cfg: Any) -> int:
    from flywheel.errors import FlywheelError

    names = available()
    if args.list or not (args.names or args.all):
        print("\n".join(names))
        return 0
    todo = names if args.all else args.names
    unknown = [n for n in todo if n not in names]
    if unknown:
        raise FlywheelError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    rc = 0
    for name in todo:
        out = subprocess.run([sys.executable, str(BENCH_DIR / f"bench_{name}.py")], check=False,
                             capture_output=True, text=True)
        lines = [ln for ln in out.stdout.strip().splitlines() if ln.startswith("{")]
        try:
            result = json.loads(lines[-1]) if lines else None
        except ValueError:
            result = None
        if out.returncode != 0 or result is None:
            rc = 1
            result = {"error": (out.stderr.strip().splitlines() or ["no JSON printed"])[-1]}
        print(json.dumps({"bench": name, **result}))
    return rc
