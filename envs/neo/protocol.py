"""The NEO wire protocol, version 1: WebSocket binary frames, each one msgpack map (docs/neo_protocol.md).

Every request carries `type` and an integer `id`; the bridge answers each request with exactly one
reply carrying the same `id`. Arrays travel as `{"__nd__": 1, "dtype": "float32", "shape": [H, 16],
"data": <raw little-endian bytes>}`; nothing is ever pickled. This module only encodes, decodes and
validates frames; the client and the bridge hold the behaviour.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from envs.errors import BridgeError

PROTOCOL_VERSION = 1
TOKEN_ENV = "FLYWHEEL_NEO_TOKEN"
MAX_FRAME_BYTES = 64 * 2**20  # a step reply with a chunk of 480p frames fits

# client -> bridge
HELLO, RESET, STEP, OBSERVE, SCENE, STATE, ESTOP, HEARTBEAT = (
    "hello", "reset", "step", "observe", "scene", "state", "estop", "heartbeat")
REQUESTS = (HELLO, RESET, STEP, OBSERVE, SCENE, STATE, ESTOP, HEARTBEAT)
# bridge -> client
WELCOME, REFUSED, OBS, STEP_RESULT, ERROR, ACK = "welcome", "refused", "obs", "step_result", "error", "ack"
REPLIES = (WELCOME, REFUSED, OBS, STEP_RESULT, ERROR, ACK, SCENE, STATE)

# error codes of an `error` reply
MALFORMED = "malformed"  # the frame or a field is not what the protocol says; the session goes on
SAFETY = "safety"  # the bridge's own safety filter rejected the chunk
ESTOPPED = "estopped"  # e-stop is latched; only reset clears it
NO_EPISODE = "no_episode"  # step/observe before the first reset
EPISODE_OVER = "episode_over"  # step after done; reset first
ENV = "env"  # the environment/robot raised (bad task, bad state)
INTERNAL = "internal"

_DTYPES = ("uint8", "int8", "int32", "int64", "float32", "float64", "bool")


class ProtocolError(BridgeError):
    """A frame that does not follow the protocol (answered with a `malformed` error)."""


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """An ndarray as a plain msgpack map of dtype, shape and raw little-endian bytes."""
    a = np.asarray(a)
    if a.dtype.kind == "U":  # text (e.g. a state's task JSON): a flat list of str
        return {"__nd__": 1, "dtype": "str", "shape": list(a.shape), "data": [str(x) for x in a.reshape(-1)]}
    if a.dtype.name not in _DTYPES:
        raise ProtocolError(f"cannot send arrays of dtype {a.dtype}; allowed: {', '.join(_DTYPES)}")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # keeps 0-d arrays 0-d
    return {"__nd__": 1, "dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes(order="C")}


def decode_array(d: dict[str, Any]) -> np.ndarray:
    """The inverse of `encode_array`; raises ProtocolError when dtype, shape and bytes disagree."""
    try:
        dtype, shape, data = d["dtype"], d["shape"], d["data"]
    except (KeyError, TypeError):
        raise ProtocolError("array needs dtype, shape and data") from None
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError(f"array shape must be a list of non-negative ints, got {shape!r}")
    if dtype == "str":
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data) \
                or len(data) != int(np.prod(shape, dtype=np.int64)):
            raise ProtocolError(f"str array of shape {shape} needs a list of {int(np.prod(shape))} strings")
        return np.array(data, dtype=str).reshape(shape)
    if dtype not in _DTYPES:
        raise ProtocolError(f"array dtype {dtype!r} is not one of {', '.join(_DTYPES)}, str")
    if not isinstance(data, bytes):
        raise ProtocolError("array data must be raw bytes (msgpack bin)")
    dt = np.dtype(dtype).newbyteorder("<")
    if len(data) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
        raise ProtocolError(f"array of shape {shape} and dtype {dtype} needs "
                            f"{int(np.prod(shape)) * dt.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} over the NEO protocol")


def _decode_tree(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get("__nd__") == 1:
            return decode_array(obj)
        return {k: _decode_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_tree(v) for v in obj]
    return obj


def pack(msg: dict[str, Any]) -> bytes:
    """One message -> one binary frame (ndarrays anywhere in the tree are encoded)."""
    return msgpack.packb(msg, use_bin_type=True, default=_default)


def unpack(frame: bytes | str) -> dict[str, Any]:
    """One binary frame -> a message with `type` (str) and `id` (int); arrays decoded. ProtocolError else."""
    if not isinstance(frame, bytes | bytearray):
        raise ProtocolError("frames must be binary msgpack, got a text frame")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types on garbage
        raise ProtocolError(f"frame is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a msgpack map")
    if not isinstance(msg.get("type"), str):
        raise ProtocolError("message has no string field 'type'")
    if not isinstance(msg.get("id"), int) or isinstance(msg.get("id"), bool):
        raise ProtocolError("message has no integer field 'id'")
    return _decode_tree(msg)


def to_plain(obj: Any) -> Any:
    """Numpy scalars/arrays and tuples -> plain Python (lists, floats), for JSON-like payloads."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_dict"):
        return to_plain(obj.to_dict())
    return obj


def encode_obs(obs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Observation `dict(rgb uint8 (H, W, 3), proprio float32 (32,))` for the wire."""
    return {"rgb": encode_array(np.asarray(obs["rgb"], np.uint8)),
            "proprio": encode_array(np.asarray(obs["proprio"], np.float32))}


def check_obs(obs: Any) -> dict[str, np.ndarray]:
    """A decoded observation, validated."""
    if not isinstance(obs, dict) or not isinstance(obs.get("rgb"), np.ndarray) \
            or not isinstance(obs.get("proprio"), np.ndarray):
        raise ProtocolError("observation needs arrays rgb and proprio")
    if obs["rgb"].dtype != np.uint8 or obs["rgb"].ndim != 3 or obs["proprio"].dtype != np.float32:
        raise ProtocolError("observation rgb must be uint8 (H, W, 3) and proprio float32")
    return {"rgb": obs["rgb"], "proprio": obs["proprio"]}
