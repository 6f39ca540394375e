"""The NEO robot path: wire protocol v1, the client backend, and the MuJoCo-backed bridge server.

Imports are lazy so `import envs.neo` pulls in neither websockets nor MuJoCo.
"""
from __future__ import annotations

from typing import Any

from envs.neo.protocol import PROTOCOL_VERSION, TOKEN_ENV

__all__ = ["PROTOCOL_VERSION", "TOKEN_ENV", "Bridge", "NeoBackend", "spawn_bridge", "start_bridge"]


def __getattr__(name: str) -> Any:
    if name == "NeoBackend":
        from envs.neo.client import NeoBackend

        return NeoBackend
    if name in ("Bridge", "start_bridge", "spawn_bridge"):
        from envs.neo import bridge

        return getattr(bridge, name)
    raise AttributeError(name)
