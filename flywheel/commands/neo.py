"""`flywheel neo-bridge`: serve the NEO wire protocol from a MuJoCo-backed robot, until interrupted."""
from __future__ import annotations

import argparse
import os
import signal
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `neo-bridge`."""
    p = sub.add_parser(
        "neo-bridge",
        help="serve the NEO robot protocol backed by the MuJoCo env (for tests, demos and sim-to-real dry runs)",
        description="Serve NEO protocol v1 (docs/neo_protocol.md) over WebSocket, backed by the MuJoCo "
        "humanoid tabletop env. The shared secret comes from --token, backend.token or $FLYWHEEL_NEO_TOKEN "
        "(prefer the environment: argv is visible to other users). Env and watchdog settings are config "
        "overrides, e.g. `env=full backend.watchdog_s=1.0`.",
    )
    p.add_argument("--host", default=None, help="address to listen on (default: backend.host)")
    p.add_argument("--port", type=int, default=None, help="port to listen on; 0 picks a free one "
                   "(default: backend.port)")
    p.add_argument("--token", default=None, help="shared secret clients must present")
    p.add_argument("--robot-id", default=None, help="robot id clients must ask for (default: any)")
    p.set_defaults(func=run_bridge)


def run_bridge(args: argparse.Namespace, cfg) -> int:
    """Start the bridge and serve until SIGINT/SIGTERM."""
    from omegaconf import OmegaConf

    from envs.neo.bridge import start_bridge
    from envs.neo.protocol import PROTOCOL_VERSION, TOKEN_ENV

    conf = OmegaConf.to_object(cfg)
    backend = conf.backend
    token = args.token or backend.token or os.environ.get(TOKEN_ENV)
    host = args.host or backend.host
    port = backend.port if args.port is None else args.port
    bridge = start_bridge(token, conf.env, backend, host=host, port=port, robot_id=args.robot_id)
    previous = signal.signal(signal.SIGTERM, lambda *_: bridge.close())  # run from the main thread
    print(f"neo-bridge: listening on {bridge.url} (protocol v{PROTOCOL_VERSION}, robot "
          f"{args.robot_id or 'any'}, watchdog {backend.watchdog_s} s)", flush=True)
    try:
        bridge.wait()
    except KeyboardInterrupt:
        print("neo-bridge: stopping", file=sys.stderr)
    finally:
        bridge.close()
        signal.signal(signal.SIGTERM, previous)
    return 0
