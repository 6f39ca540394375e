"""The NEO robot backend: a client of the NEO bridge speaking protocol v1 (docs/neo_protocol.md).

`NeoBackend` connects to `ws://cfg.host:cfg.port`, says hello with the shared-secret token
(`cfg.token`, else $FLYWHEEL_NEO_TOKEN) and the robot id, then serves the `Backend` interface.
Every chunk passes the client's `SafetyFilter` before it is packed: a NaN or out-of-limit command
never leaves this process. A reader thread matches replies to requests by id (so an e-stop can be
sent while a chunk is executing), a heartbeat thread keeps the bridge's watchdog fed, and every
request has a timeout that raises a BridgeError naming the bridge and the request.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from envs.backend import Backend, Obs, StepResult, joint_positions, make_safety_filter, task_from_dict
from envs.config import BackendConfig, EnvConfig
from envs.errors import BridgeError, SafetyViolation
from envs.neo import protocol as P

log = logging.getLogger(__name__)


def ws_connect(url: str, **kwargs: Any) -> Any:
    """`websockets.sync.client.connect` returning the connection directly (no context manager needed)."""
    import inspect

    from websockets.sync.client import connect

    if "legacy" in inspect.signature(connect).parameters:  # websockets >= 16 warns without it
        kwargs["legacy"] = True
    return connect(url, **kwargs)


class NeoBackend(Backend):
    """A NEO robot (or the MuJoCo-backed bridge) over the network, behind the safety filter."""

    def __init__(self, robot_id: str, cfg: BackendConfig | None = None, env_cfg: EnvConfig | None = None,
                 token: str | None = None) -> None:
        self.cfg = cfg or BackendConfig()
        self.env_cfg = env_cfg or EnvConfig()
        self.robot_id = robot_id
        self.url = f"ws://{self.cfg.host}:{self.cfg.port}"
        self.timeout_s = float(self.cfg.timeout_s)
        self.sent: Counter[str] = Counter()  # frames sent, by message type
        self.status: dict[str, Any] = {}  # the bridge's last reported status
        self.last_exec_ms = 0.0  # robot-side time of the last request (the rest of a round trip is transport)
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.Queue] = {}
        self._pending_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._dead: str | None = None  # why the link is gone
        self._closed = threading.Event()
        self._heartbeat_on = threading.Event()
        self._last_send = time.monotonic()
        self._obs: Obs | None = None
        self._task: Any = None
        self._refresh_reference = False
        try:
            self._ws = ws_connect(self.url, open_timeout=self.timeout_s, close_timeout=1.0, compression=None,
                               max_size=P.MAX_FRAME_BYTES)
        except TimeoutError:
            raise BridgeError(f"NEO bridge at {self.url} did not complete the handshake within "
                              f"{self.timeout_s:.1f} s") from None
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, bad HTTP answer
            raise BridgeError(f"cannot reach the NEO bridge at {self.url}: {exc}") from None
        self._reader = threading.Thread(target=self._read_loop, name="neo-reader", daemon=True)
        self._reader.start()
        token = token if token is not None else (self.cfg.token or os.environ.get(P.TOKEN_ENV) or "")
        try:
            welcome = self._request({"type": P.HELLO, "version": P.PROTOCOL_VERSION, "token": token,
                                     "robot_id": robot_id}, expect=P.WELCOME)
        except BridgeError:
            self.close()
            raise
        try:
            self._low, self._high, self.control_hz = self._check_welcome(welcome)
            self.safety = make_safety_filter(self.cfg.safety, self._low, self._high, self.control_hz, "neo-safety")
        except BridgeError:
            self.close()
            raise
        self._heartbeat_on.set()
        if self.cfg.heartbeat_s > 0:
            threading.Thread(target=self._heartbeat_loop, name="neo-heartbeat", daemon=True).start()
        log.info("connected to NEO bridge %s as robot %s", self.url, welcome.get("robot_id"))

    def _check_welcome(self, welcome: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
        """The joint limits and control rate of the bridge's welcome, checked against this config: the
        planner's rate limit and the client's safety filter must agree with the robot's."""
        try:
            low = np.asarray(welcome["action_low"], np.float64)
            high = np.asarray(welcome["action_high"], np.float64)
            hz = float(welcome["control_hz"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BridgeError(f"the NEO bridge at {self.url} sent a malformed welcome ({type(exc).__name__}: "
                              f"{exc}); it needs action_low, action_high and control_hz") from None
        if (low.ndim != 1 or low.shape != high.shape or low.size == 0 or not np.isfinite(low).all()
                or not np.isfinite(high).all() or np.any(low > high)):
            raise BridgeError(f"the NEO bridge at {self.url} sent invalid joint limits: they must be finite "
                              f"(D,) arrays with low <= high, got shapes {low.shape} and {high.shape}")
        if not (np.isfinite(hz) and hz > 0):
            raise BridgeError(f"the NEO bridge at {self.url} sent an invalid control rate {hz}")
        if abs(hz - self.env_cfg.control_hz) > 1e-6 * hz:
            raise BridgeError(f"the bridge runs at {hz:g} Hz but env.control_hz is {self.env_cfg.control_hz:g}; "
                              f"start the bridge with the same env config")
        if welcome.get("image_size") != self.env_cfg.image_size:
            raise BridgeError(f"the bridge renders {welcome.get('image_size')} px images but env.image_size is "
                              f"{self.env_cfg.image_size}; start the bridge with the same env config")
        return low.astype(np.float32), high.astype(np.float32), hz

    # -- transport ----------------------------------------------------------------------------------
    def _request(self, msg: dict[str, Any], expect: str | tuple[str, ...], timeout: float | None = None) -> dict:
        """Send one request and wait for the reply with its id; errors become BridgeError/SafetyViolation."""
        from websockets.exceptions import ConnectionClosed

        if self._dead:
            raise BridgeError(f"the link to the NEO bridge at {self.url} is down: {self._dead}")
        mid = next(self._ids)
        slot: queue.Queue = queue.Queue(maxsize=1)
        with self._pending_lock:
            self._pending[mid] = slot
        frame = P.pack({**msg, "id": mid})
        try:
            with self._send_lock:
                self._ws.send(frame)
                self.sent[msg["type"]] += 1
                self._last_send = time.monotonic()
            reply = slot.get(timeout=self.timeout_s if timeout is None else timeout)
        except queue.Empty:
            raise BridgeError(f"NEO bridge at {self.url} did not answer {msg['type']!r} within "
                              f"{self.timeout_s if timeout is None else timeout:.1f} s") from None
        except ConnectionClosed as exc:
            raise BridgeError(f"the NEO bridge at {self.url} closed the connection: {exc}") from None
        finally:
            with self._pending_lock:
                self._pending.pop(mid, None)
        if reply is None:
            raise BridgeError(f"the link to the NEO bridge at {self.url} is down: {self._dead}")
        if isinstance(reply.get("status"), dict):
            self._note_status(reply["status"])
        if "exec_ms" in reply:
            self.last_exec_ms = float(reply["exec_ms"])
        typ = reply["type"]
        if typ == P.REFUSED:
            raise BridgeError(f"the NEO bridge at {self.url} refused us: {reply.get('reason')}")
        if typ == P.ERROR:
            code, text = reply.get("code"), reply.get("message")
            if code in (P.SAFETY, P.ESTOPPED):
                raise SafetyViolation(f"NEO bridge refused the command ({code}): {text}")
            raise BridgeError(f"NEO bridge error ({code}) on {msg['type']!r}: {text}")
        if typ not in ((expect,) if isinstance(expect, str) else expect):
            raise BridgeError(f"NEO bridge answered {msg['type']!r} with {typ!r}; protocol mismatch")
        return reply

    def _read_loop(self) -> None:
        try:
            for frame in self._ws:
                try:
                    reply = P.unpack(frame)
                except P.ProtocolError as exc:
                    log.warning("NEO client: malformed frame from the bridge: %s", exc)
                    continue
                with self._pending_lock:
                    slot = self._pending.get(reply["id"])
                if slot is not None:
                    slot.put(reply)
                elif reply.get("type") == P.ERROR:
                    log.warning("NEO client: bridge error: %s", reply.get("message"))
                else:
                    log.debug("NEO client: dropped a late reply (id %s)", reply["id"])
        except Exception as exc:  # noqa: BLE001 - connection closed or broken
            self._dead = self._dead or f"connection lost ({type(exc).__name__}: {exc})"
        self._dead = self._dead or "connection closed by the bridge"
        with self._pending_lock:
            for slot in self._pending.values():
                slot.put(None)

    def _heartbeat_loop(self) -> None:
        period = float(self.cfg.heartbeat_s)
        while not self._closed.wait(period / 2):
            if self._dead:
                return
            if not self._heartbeat_on.is_set() or time.monotonic() - self._last_send < period:
                continue
            try:
                self._request({"type": P.HEARTBEAT}, expect=P.ACK)
            except Exception as exc:  # noqa: BLE001 - the next request reports it
                log.warning("NEO client: heartbeat failed: %s", exc)
                self._dead = self._dead or f"heartbeat failed: {exc}"
                return

    def pause_heartbeats(self, paused: bool = True) -> None:
        """Stop (or resume) heartbeats, e.g. to exercise the bridge's watchdog."""
        if paused:
            self._heartbeat_on.clear()
        else:
            self._heartbeat_on.set()

    def _note_status(self, status: dict[str, Any]) -> None:
        if status.get("watchdog_trips", 0) > self.status.get("watchdog_trips", 0):
            log.warning("NEO client: the bridge's watchdog tripped; the robot held still")
            self._refresh_reference = True
        self.status = status

    # -- the Backend interface ------------------------------------------------------------------------
    def reset(self, task: Any = None, seed: int | None = None, state: dict | None = None) -> Obs:
        if task is not None and not isinstance(task, dict):
            task = task.to_dict()
        if state is not None:
            state = {k: np.asarray(v) for k, v in state.items()}
        reply = self._request({"type": P.RESET, "task": task, "seed": seed, "state": state}, expect=P.OBS)
        self._obs = P.check_obs(reply["obs"])
        self._task = task_from_dict(reply.get("task"))
        self.safety.reset(joint_positions(self._obs, self._low.shape[0]))
        self._refresh_reference = False
        return self._obs

    def _sync_reference(self) -> None:
        if self._refresh_reference:  # after a hold the robot is not where our last target was
            self.safety.reset(joint_positions(self.observe(), self._low.shape[0]))
            self._refresh_reference = False

    def command_reference(self) -> np.ndarray | None:
        """Asks the bridge how it stands first (one round trip): a watchdog hold that began since the last
        reply (heartbeats starved during a long plan) makes the held pose the reference."""
        self.observe()
        self._sync_reference()
        return self.safety.reference

    def step(self, actions: np.ndarray) -> StepResult:
        self._sync_reference()
        chunk = self.safety.check(actions)  # (H, 16) float32; raises before anything is sent
        reply = self._request({"type": P.STEP, "actions": chunk}, expect=P.STEP_RESULT,
                              timeout=self.timeout_s + len(chunk) / self.control_hz)
        observations = [P.check_obs(o) for o in reply["observations"]]
        if observations:
            self._obs = observations[-1]
        return StepResult(observations, bool(reply["success"]), bool(reply["done"]), dict(reply.get("info") or {}))

    def observe(self) -> Obs:
        self._obs = P.check_obs(self._request({"type": P.OBSERVE}, expect=P.OBS)["obs"])
        return self._obs

    def scene_description(self) -> dict:
        return self._request({"type": P.SCENE}, expect=P.SCENE)["scene"]

    def get_state(self) -> dict[str, np.ndarray]:
        return dict(self._request({"type": P.STATE}, expect=P.STATE)["state"])

    def estop(self) -> None:
        """Send the e-stop now (it preempts a chunk in flight); the bridge latches it until reset."""
        self._request({"type": P.ESTOP}, expect=P.ACK)

    def close(self) -> None:
        self._closed.set()
        self._dead = self._dead or "closed by the client"
        try:
            self._ws.close()
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("NEO client: close: %s", exc)
