"""NEO bridge on loopback: step round trip at 64x64 vs the in-process sim backend's step.

Starts `flywheel neo-bridge` in a subprocess (the robot side, as it would run on NEO; `--thread` serves
it from this process instead), connects a `neo:<id>` backend and times `step` on one-step chunks
(safety filter, msgpack, WebSocket, env step with render, observation back). The baseline is
`SimBackend.step` on the same chunks in this process; the protocol's own cost is the heartbeat round
trip, and per step the round trip minus the bridge's own execution time (`exec_ms`). Targets from
issue 3: median <= 5 ms, p99 <= 20 ms (they include the env step itself). Prints one JSON object.

    .venv/bin/python bench/bench_neo.py [--steps 300] [--image-size 64] [--thread]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from envs.backend import Backend, SimBackend, make_backend
from envs.config import BackendConfig, EnvConfig
from envs.neo import protocol as P


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median": round(float(np.median(a)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "mean": round(float(a.mean()), 3), "n": int(a.size)}


def time_steps(backend: Backend, steps: int, seed: int = 0, transport: list[float] | None = None) -> list[float]:
    """Milliseconds per one-step chunk; a gentle sine on the arms, resets (untimed) at episode end.
    `transport` collects round trip minus the bridge's own execution time (NEO only)."""
    q0 = backend.reset(seed=seed)["proprio"][:16].copy()
    times: list[float] = []
    t = 0
    while len(times) < steps:
        target = q0.copy()
        target[:14] += 0.05 * np.sin(0.3 * t)
        chunk = np.clip(target, backend.action_low, backend.action_high)[None].astype(np.float32)  # (1, 16)
        start = time.perf_counter()
        result = backend.step(chunk)
        times.append((time.perf_counter() - start) * 1e3)
        if transport is not None:
            transport.append(times[-1] - backend.last_exec_ms)
        t += 1
        if result.done:
            q0 = backend.reset(seed=seed + len(times))["proprio"][:16].copy()
            t = 0
    return times


def heartbeat_rtt(neo, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        neo._request({"type": P.HEARTBEAT}, expect=P.ACK)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--thread", action="store_true", help="serve the bridge from a thread of this process")
    ap.add_argument("--physics-dt", type=float, default=EnvConfig().physics_dt, help="MuJoCo timestep (s)")
    args = ap.parse_args()
    env_cfg = EnvConfig(image_size=args.image_size, physics_dt=args.physics_dt)
    token = secrets.token_hex(16)

    from envs.neo.bridge import spawn_bridge, start_bridge

    if args.thread:
        bridge = start_bridge(token, env_cfg, BackendConfig(watchdog_s=2.0))
    else:
        bridge = spawn_bridge(token, [f"env.image_size={args.image_size}", f"env.physics_dt={args.physics_dt}",
                                      "backend.watchdog_s=2.0"])
    neo_ms: list[float] = []
    sim_ms: list[float] = []
    transport_ms: list[float] = []
    try:
        cfg = BackendConfig(name="neo:neo-001", port=bridge.port, token=token, watchdog_s=2.0)
        with make_backend(cfg.name, cfg, env_cfg) as neo, SimBackend(BackendConfig(), env_cfg) as sim:
            time_steps(neo, 20)  # warm-up (renderers, caches)
            time_steps(sim, 20)
            for block in range(0, args.steps, 50):  # interleaved blocks: both see the same machine load
                n = min(50, args.steps - block)
                sim_ms += time_steps(sim, n, seed=block)
                neo_ms += time_steps(neo, n, seed=block, transport=transport_ms)
            hb_ms = heartbeat_rtt(neo, 100)
    finally:
        bridge.close()

    neo_s, sim_s = summary(neo_ms), summary(sim_ms)
    print(json.dumps({
        "bench": "neo_bridge_loopback",
        "image_size": args.image_size,
        "physics_dt": args.physics_dt,
        "bridge": "thread" if args.thread else "subprocess",
        "neo_step_ms": neo_s,
        "sim_step_ms": sim_s,
        "transport_ms": summary(transport_ms),  # round trip minus the bridge's env step
        "heartbeat_rtt_ms": summary(hb_ms),
        "protocol_overhead_ms_median": round(neo_s["median"] - sim_s["median"], 3),
        "ratio_neo_over_sim_median": round(neo_s["median"] / sim_s["median"], 3),
        "targets": {"median_ms": 5.0, "p99_ms": 20.0},
        "meets_targets": neo_s["median"] <= 5.0 and neo_s["p99"] <= 20.0,
    }))


if __name__ == "__main__":
    main()
