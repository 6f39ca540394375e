"""The robot side of the NEO protocol, backed by the MuJoCo humanoid tabletop env.

`Bridge` serves WebSocket sessions (one thread each) and owns the env in one "robot thread", the
stand-in for the robot's controller: every env call (creation, reset, step, render) happens there, in
the order requests arrived. The robot thread also runs the watchdog: when no request or heartbeat has
arrived for `watchdog_s` during an episode, the robot holds still (arm targets := current joint
positions, grippers keep their last target), and the simulated robot keeps being stepped at the
control rate while it holds, so the hold is physical and observable. An `estop` preempts the chunk in
flight between two control ticks and latches (the robot holds) until the next `reset`.
The bridge re-applies its own safety filter to every chunk. Start one with `flywheel neo-bridge`,
`start_bridge(...)` (background threads) or `spawn_bridge(...)` (a subprocess), both on loopback.
"""
from __future__ import annotations

import hmac
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Self

import numpy as np

from envs.backend import execute_chunk, joint_positions, make_safety_filter, reset_options
from envs.config import BackendConfig, EnvConfig
from envs.errors import EnvError, SafetyViolation
from envs.neo import protocol as P

log = logging.getLogger(__name__)
_N_ARM = 14


class _Fail(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Bridge:
    """A NEO bridge: token check, request handling, robot thread with watchdog and e-stop latch."""

    def __init__(self, token: str | None, env_cfg: EnvConfig | None = None, cfg: BackendConfig | None = None,
                 robot_id: str | None = None, env_factory: Callable[[], Any] | None = None) -> None:
        if not token:
            raise EnvError(f"the NEO bridge needs a shared secret: pass --token, set backend.token or {P.TOKEN_ENV}")
        self.env_cfg = env_cfg or EnvConfig()
        self.cfg = cfg or BackendConfig()
        self.robot_id = robot_id  # None: answer to any robot id
        self._token = token.encode()
        self._env_factory = env_factory or self._default_env
        self.control_dt = 1.0 / self.env_cfg.control_hz
        self.watchdog_s = float(self.cfg.watchdog_s)
        self.counts: Counter[str] = Counter()  # requests received by type, plus refused/malformed
        self._jobs: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._preempt = threading.Event()  # set by an estop as soon as it is read
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._last_contact = time.monotonic()
        # robot-thread state
        self._env: Any = None
        self._obs: dict | None = None
        self._task: Any = None
        self._episode = self._done = self._held = self._estopped = False
        self._trips = self._t = 0
        self._last_target: np.ndarray | None = None
        self._hold_target: np.ndarray | None = None
        self._next_hold = 0.0
        self._server: Any = None
        self._threads: list[threading.Thread] = []

    def _default_env(self) -> Any:
        from envs.tabletop import HumanoidTabletopEnv

        return HumanoidTabletopEnv(self.env_cfg)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> Bridge:
        """Create the env in the robot thread, then listen on host:port (0 picks a free port)."""
        from websockets.sync.server import serve

        robot = threading.Thread(target=self._robot_loop, name="neo-robot", daemon=True)
        robot.start()
        self._threads.append(robot)
        self._ready.wait()
        if self._startup_error is not None:
            raise EnvError(f"the NEO bridge could not create its env: {self._startup_error}")
        try:
            self._server = serve(self._session, host, port, compression=None, max_size=P.MAX_FRAME_BYTES)
        except OSError as exc:
            self.close()
            raise EnvError(f"the NEO bridge cannot listen on {host}:{port}: {exc}") from None
        server = threading.Thread(target=self._server.serve_forever, name="neo-server", daemon=True)
        server.start()
        self._threads.append(server)
        log.info("NEO bridge listening on %s (protocol v%d)", self.url, P.PROTOCOL_VERSION)
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self._server.socket.getsockname()[:2]

    @property
    def port(self) -> int:
        return int(self.address[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"ws://{host}:{port}"

    def wait(self) -> None:
        """Block until close() (the CLI's serve loop)."""
        while not self._stopping.wait(0.5):
            pass

    def close(self) -> None:
        """Stop serving and release the env."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        """What every reply reports: holding (watchdog), e-stop latch, trips, episode, step count."""
        estopped = self._estopped or self._preempt.is_set()  # latched from the moment it is read
        return {"held": self._held, "estopped": estopped, "watchdog_trips": self._trips,
                "episode": self._episode, "done": self._done, "t": self._t}

    # -- sessions (one thread per connection) -----------------------------------------------------
    def _session(self, conn: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        lock = threading.Lock()

        def send(msg: dict[str, Any]) -> None:
            try:
                with lock:
                    conn.send(P.pack(msg))
            except ConnectionClosed:
                log.info("NEO bridge: a reply was lost, the client has gone")

        authed = False
        try:
            for frame in conn:
                try:
                    msg = P.unpack(frame)
                except P.ProtocolError as exc:
                    self.counts["malformed"] += 1
                    log.warning("NEO bridge: malformed frame: %s", exc)
                    send({"type": P.ERROR, "id": 0, "code": P.MALFORMED, "message": str(exc), "status": self.status()})
                    continue
                self.counts[msg["type"]] += 1
                if not authed:
                    reply = self._hello(msg)
                    send(reply)
                    if reply["type"] != P.WELCOME:
                        conn.close()
                        return
                    authed = True
                    self._last_contact = time.monotonic()
                    continue
                self._last_contact = time.monotonic()
                self._dispatch(msg, send)
        except ConnectionClosed:
            pass
        log.info("NEO bridge: session closed")

    def _hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        def refuse(reason: str) -> dict[str, Any]:
            self.counts["refused"] += 1
            log.warning("NEO bridge: refused a client: %s", reason)
            return {"type": P.REFUSED, "id": msg["id"], "reason": reason}

        if msg["type"] != P.HELLO:
            return refuse(f"the first message must be 'hello', got {msg['type']!r}")
        if msg.get("version") != P.PROTOCOL_VERSION:
            return refuse(f"protocol version {msg.get('version')!r} is not supported (bridge speaks "
                          f"v{P.PROTOCOL_VERSION})")
        token = msg.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._token):
            return refuse(f"bad or missing token (set backend.token or {P.TOKEN_ENV})")
        robot_id = msg.get("robot_id")
        if self.robot_id is not None and robot_id != self.robot_id:
            return refuse(f"this bridge drives robot {self.robot_id!r}, not {robot_id!r}")
        return {"type": P.WELCOME, "id": msg["id"], "version": P.PROTOCOL_VERSION,
                "robot_id": self.robot_id or robot_id, "action_low": self._low, "action_high": self._high,
                "control_hz": self.env_cfg.control_hz, "image_size": self.env_cfg.image_size,
                "watchdog_s": self.watchdog_s, "status": self.status()}

    def _dispatch(self, msg: dict[str, Any], send: Callable[[dict], None]) -> None:
        typ = msg["type"]
        if typ == P.HEARTBEAT:
            send({"type": P.ACK, "id": msg["id"], "status": self.status()})
        elif typ == P.ESTOP:
            self._preempt.set()  # stop the chunk in flight at the next control tick
            log.warning("NEO bridge: E-STOP received")
            self._jobs.put((self._do_estop, msg, send))
        elif typ in self._handlers:
            self._jobs.put((self._handlers[typ], msg, send))
        else:
            self.counts["malformed"] += 1
            send({"type": P.ERROR, "id": msg["id"], "code": P.MALFORMED,
                  "message": f"unknown message type {typ!r}; expected one of {', '.join(P.REQUESTS)}",
                  "status": self.status()})

    # -- the robot thread -----------------------------------------------------------------------------
    def _robot_loop(self) -> None:
        try:
            self._env = self._env_factory()
            self._low = np.asarray(self._env.action_space.low, np.float32)
            self._high = np.asarray(self._env.action_space.high, np.float32)
            self._dim = int(self._low.shape[0])
            self._safety = make_safety_filter(self.cfg.safety, self._low, self._high,
                                              self.env_cfg.control_hz, "bridge-safety")
            self._handlers = {P.RESET: self._do_reset, P.STEP: self._do_step, P.OBSERVE: self._do_observe,
                              P.SCENE: self._do_scene, P.STATE: self._do_state}
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        tick = max(0.005, min(self.control_dt, self.watchdog_s / 4, 0.05))
        try:
            while not self._stopping.is_set():
                try:
                    job = self._jobs.get(timeout=tick)
                except queue.Empty:
                    job = None
                if job is not None:
                    self._run_job(*job)
                self._watchdog_tick()
        finally:
            self._env.close()

    def _run_job(self, fn: Callable[[dict], dict], msg: dict[str, Any], send: Callable[[dict], None]) -> None:
        start = time.perf_counter()
        try:
            reply = fn(msg)
        except _Fail as exc:
            reply = {"type": P.ERROR, "code": exc.code, "message": str(exc)}
        except SafetyViolation as exc:
            reply = {"type": P.ERROR, "code": P.SAFETY, "message": str(exc)}
        except P.ProtocolError as exc:
            self.counts["malformed"] += 1
            reply = {"type": P.ERROR, "code": P.MALFORMED, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the env refused a task/state; keep serving
            log.warning("NEO bridge: %s failed: %s: %s", msg["type"], type(exc).__name__, exc)
            reply = {"type": P.ERROR, "code": P.ENV, "message": f"{type(exc).__name__}: {exc}"}
        reply["id"] = msg["id"]
        reply["status"] = self.status()
        reply["exec_ms"] = (time.perf_counter() - start) * 1e3  # time spent on the robot side
        self._last_contact = time.monotonic()  # a long chunk is not silence
        send(reply)

    def _watchdog_tick(self) -> None:
        if not self._episode or self._done:
            return
        now = time.monotonic()
        if not (self._held or self._estopped) and now - self._last_contact > self.watchdog_s:
            self._trips += 1
            log.warning("NEO bridge: watchdog: no command for %.2f s, holding still", now - self._last_contact)
            self._hold()
        if (self._held or self._estopped) and now >= self._next_hold and np.isfinite(self._hold_target).all():
            obs, _, terminated, truncated, _ = self._env.step(self._hold_target)
            self._obs, self._t = obs, self._t + 1
            self._done = bool(terminated or truncated)
            self._next_hold = now + self.control_dt

    def _hold(self, estop: bool = False) -> None:
        """Targets := current arm joint positions (grippers keep their last target); stepped while holding."""
        if self._dim != 16:  # not joint targets (ee_delta): a zero action moves nothing
            target = np.zeros(self._dim, np.float32)
        else:
            target = hold_target(joint_positions(self._obs, self._dim), self._low, self._high, self._last_target)
        self._hold_target = target.astype(np.float32)
        if np.isfinite(self._hold_target).all():
            self._safety.reset(self._hold_target)
        else:  # a joint reads NaN and no target was ever sent for it: nothing is commanded while holding
            log.error("NEO bridge: holding with non-finite joint readings and no last target: not stepping")
        self._next_hold = time.monotonic()
        if estop:
            self._estopped = True
        else:
            self._held = True

    def _require_episode(self) -> None:
        if not self._episode:
            raise _Fail(P.NO_EPISODE, "no episode yet: send reset first")

    def _do_reset(self, msg: dict[str, Any]) -> dict[str, Any]:
        task, seed, state = msg.get("task"), msg.get("seed"), msg.get("state")
        if task is not None and not isinstance(task, dict):
            raise P.ProtocolError("reset.task must be a map (TaskInstance.to_dict()) or nil")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise P.ProtocolError("reset.seed must be an integer or nil")
        if state is not None and not (isinstance(state, dict)
                                      and all(isinstance(v, np.ndarray) for v in state.values())):
            raise P.ProtocolError("reset.state must be a map of name -> array or nil")
        obs, info = self._env.reset(seed=seed, options=reset_options(task, state))
        self._obs, self._task = obs, P.to_plain(info.get("task"))
        self._episode, self._done, self._held, self._estopped = True, False, False, False
        self._preempt.clear()
        self._last_target = None
        self._t = 0
        self._safety.reset(joint_positions(obs, self._dim))
        return {"type": P.OBS, "obs": P.encode_obs(obs), "task": self._task}

    def _do_step(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._require_episode()
        if self._estopped or self._preempt.is_set():
            raise _Fail(P.ESTOPPED, "e-stop is latched: the robot holds still until the next reset")
        if self._done:
            raise _Fail(P.EPISODE_OVER, "the episode is over (done): send reset")
        actions = msg.get("actions")
        if not isinstance(actions, np.ndarray):
            raise P.ProtocolError("step.actions must be an array (H, 16) float32")
        chunk = self._safety.check(actions)  # (H, 16) float32 or SafetyViolation
        if self._held:
            log.info("NEO bridge: commands resumed after a watchdog hold")
            self._held = False
        result = execute_chunk(self._env, chunk, should_stop=self._preempt.is_set)
        if result.observations:
            self._obs = result.observations[-1]
            self._last_target = chunk[len(result.observations) - 1]
        self._t += len(result.observations)
        self._done = result.done
        return {"type": P.STEP_RESULT, "observations": [P.encode_obs(o) for o in result.observations],
                "success": result.success, "done": result.done, "info": P.to_plain(result.info),
                "task": self._task}

    def _do_estop(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self._episode and not self._estopped:
            self._hold(estop=True)
        self._estopped = True
        return {"type": P.ACK}

    def _do_observe(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._require_episode()
        return {"type": P.OBS, "obs": P.encode_obs(self._obs), "task": self._task}

    def _do_scene(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._require_episode()
        return {"type": P.SCENE, "scene": P.to_plain(self._env.scene_description())}

    def _do_state(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._require_episode()
        return {"type": P.STATE, "state": {k: np.asarray(v) for k, v in self._env.get_state().items()}}


def hold_target(current: np.ndarray, low: np.ndarray, high: np.ndarray,
                last_target: np.ndarray | None) -> np.ndarray:
    """The target that holds the robot still: the measured arm joints inside the limits, the grippers at
    their last target. A joint whose reading is not finite (a broken encoder) keeps its last target; with
    no last target it stays NaN, and the caller commands nothing."""
    target = np.clip(np.asarray(current, np.float64), low, high)  # (NaN stays NaN)
    if last_target is not None:
        last = np.asarray(last_target, np.float64)
        target[_N_ARM:] = last[_N_ARM:]
        bad = ~np.isfinite(target)
        target[bad] = last[bad]
    return target.astype(np.float32)


# -- starting bridges for tests, benches and the CLI -------------------------------------------------
def start_bridge(token: str, env_cfg: EnvConfig | None = None, cfg: BackendConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0, robot_id: str | None = None,
                 env_factory: Callable[[], Any] | None = None) -> Bridge:
    """A bridge served from background threads of this process (port 0: a free loopback port)."""
    return Bridge(token, env_cfg, cfg, robot_id, env_factory).start(host, port)


class BridgeProcess:
    """A `flywheel neo-bridge` subprocess; `url`/`port` once it listens, `close()` terminates it."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int) -> None:
        self.proc, self.host, self.port = proc, host, port
        self.url = f"ws://{host}:{port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LISTENING = re.compile(r"listening on ws://([\d.]+):(\d+)")


def spawn_bridge(token: str, overrides: list[str] | None = None, port: int = 0, robot_id: str | None = None,
                 timeout_s: float = 60.0) -> BridgeProcess:
    """Run `flywheel neo-bridge` in a subprocess on loopback (token passed by env, not argv); wait for it."""
    cmd = [sys.executable, "-m", "flywheel.cli", "neo-bridge", "--host", "127.0.0.1", "--port", str(port)]
    if robot_id:
        cmd += ["--robot-id", robot_id]
    cmd += list(overrides or [])
    env = dict(os.environ, **{P.TOKEN_ENV: token})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()  # also keeps the pipe drained
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:  # the process exited
            break
        seen.append(line)
        m = _LISTENING.search(line)
        if m:
            return BridgeProcess(proc, m.group(1), int(m.group(2)))
    proc.kill()
    proc.wait()
    raise EnvError("neo-bridge subprocess did not start:\n" + "".join(seen[-20:]))


def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)
