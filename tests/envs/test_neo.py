"""The NEO client against the bridge on loopback: token, malformed frames, safety before sending,
watchdog hold, e-stop latch, timeouts, and the same episode through `sim` and through `neo`."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from envs.backend import SimBackend, make_backend
from envs.config import BackendConfig, EnvConfig
from envs.errors import BridgeError, EnvError, SafetyViolation
from envs.neo import protocol as P
from envs.neo.bridge import spawn_bridge, start_bridge
from envs.neo.client import ws_connect
from envs.robot import ACTION_HIGH, ACTION_LOW, HOME_QPOS

TOKEN = "s3cret-test-token"


# One env config for the bridge and the client: small frames, episodes long enough for a 150-step chunk.
ENV_CFG = EnvConfig(image_size=32, max_steps=300)


@pytest.fixture(scope="module")
def env_cfg() -> EnvConfig:
    return ENV_CFG


@pytest.fixture(scope="module")
def bridge():
    """One MuJoCo-backed bridge for the module (tests look at count deltas, and reset what they use)."""
    b = start_bridge(TOKEN, ENV_CFG, BackendConfig(watchdog_s=0.4))
    yield b
    b.close()


def cfg_for(bridge, **kw) -> BackendConfig:
    return BackendConfig(name="neo:neo-001", port=bridge.port, token=TOKEN, **kw)


def raw_client(bridge, hello: bool = True):
    ws = ws_connect(bridge.url, compression=None)
    if hello:
        ws.send(P.pack({"type": "hello", "id": 1, "version": P.PROTOCOL_VERSION, "token": TOKEN, "robot_id": "x"}))
        assert P.unpack(ws.recv(timeout=5))["type"] == "welcome"
    return ws


def ask(ws, msg: dict) -> dict:
    ws.send(P.pack(msg))
    return P.unpack(ws.recv(timeout=5))


def small_steps(q0: np.ndarray, h: int, joint: int = 0, step: float = 0.2) -> np.ndarray:
    a = np.repeat(np.asarray(q0, np.float32)[None], h, axis=0)  # (H, 16)
    a[:, joint] -= step * np.arange(1, h + 1)  # downwards: the reset pose is near the upper limits
    return a


@pytest.mark.parametrize("token", ["wrong", ""])
def test_client_without_the_token_is_refused(bridge, env_cfg, token) -> None:
    before = bridge.counts.copy()
    with pytest.raises(BridgeError, match="refused us: bad or missing token"):
        make_backend("neo:neo-001", BackendConfig(name="neo:neo-001", port=bridge.port, token=token or None), env_cfg)
    assert bridge.counts["refused"] == before["refused"] + 1
    assert bridge.counts["reset"] == before["reset"]


def test_token_from_the_environment(bridge, env_cfg, monkeypatch) -> None:
    monkeypatch.setenv(P.TOKEN_ENV, TOKEN)
    with make_backend("neo:neo-001", BackendConfig(name="neo:neo-001", port=bridge.port), env_cfg) as neo:
        assert neo.reset(seed=0)["rgb"].shape == (32, 32, 3)


def test_wrong_robot_and_version_are_refused(bridge, env_cfg) -> None:
    bridge.robot_id = "neo-007"
    try:
        with pytest.raises(BridgeError, match="drives robot 'neo-007', not 'neo-001'"):
            make_backend("neo:neo-001", cfg_for(bridge), env_cfg)
    finally:
        bridge.robot_id = None
    ws = raw_client(bridge, hello=False)
    reply = ask(ws, {"type": "hello", "id": 1, "version": 99, "token": TOKEN, "robot_id": "neo-001"})
    assert reply["type"] == "refused" and "version 99" in reply["reason"]
    ws.close()
    ws = raw_client(bridge, hello=False)
    reply = ask(ws, {"type": "reset", "id": 1, "seed": 0})  # no hello first
    assert reply["type"] == "refused" and "must be 'hello'" in reply["reason"]
    ws.close()


def test_malformed_messages_get_an_error_and_the_bridge_keeps_serving(bridge, env_cfg) -> None:
    before = bridge.counts["malformed"]
    ws = raw_client(bridge)
    for frame in [b"\xc1 not msgpack", "a text frame", P.pack([1, 2]), P.pack({"type": "step"}),
                  P.pack({"type": "fly", "id": 7}),
                  P.pack({"type": "reset", "id": 8, "seed": "zero"}),
                  P.pack({"type": "step", "id": 9, "actions": {"__nd__": 1, "dtype": "float32", "shape": [1, 16],
                                                               "data": b"\x00" * 10}}),
                  P.pack({"type": "step", "id": 10, "actions": [0.0] * 16})]:
        ws.send(frame)
        reply = P.unpack(ws.recv(timeout=5))
        assert reply["type"] == "error" and reply["code"] == "malformed", reply
    reply = ask(ws, {"type": "reset", "id": 11, "task": {"family": "juggle"}})
    assert reply["type"] == "error" and reply["code"] == "env"  # the env refused the task; still serving
    reply = ask(ws, {"type": "reset", "id": 12, "seed": 0})  # the same session goes on
    assert reply["type"] == "obs" and reply["obs"]["rgb"].shape == (32, 32, 3)
    with make_backend("neo:neo-001", cfg_for(bridge), env_cfg) as neo:  # and new sessions too
        assert neo.reset(seed=1)["proprio"].shape == (32,)
    ws.close()
    assert bridge.counts["malformed"] == before + 8


def test_nan_action_never_leaves_the_client(bridge, env_cfg) -> None:
    with make_backend("neo:neo-001", cfg_for(bridge), env_cfg) as neo:
        obs = neo.reset(seed=0)
        steps_before = bridge.counts["step"]
        bad = small_steps(obs["proprio"][:16], 3, step=0.05)
        bad[1, 4] = np.nan
        with pytest.raises(SafetyViolation, match="non-finite"):
            neo.step(bad)
        too_fast = small_steps(obs["proprio"][:16], 3, step=0.5)
        with pytest.raises(SafetyViolation, match="rad/s"):
            neo.step(too_fast)
        assert neo.sent["step"] == 0 and bridge.counts["step"] == steps_before
        assert neo.safety.counts["rejected:nonfinite"] == 1 and neo.safety.counts["rejected:velocity"] == 1
        res = neo.step(small_steps(obs["proprio"][:16], 3, step=0.05))
        assert len(res.observations) == 3 and res.observations[0]["proprio"].dtype == np.float32
        assert neo.sent["step"] == 1 and bridge.counts["step"] == steps_before + 1


def test_bridge_reapplies_the_safety_filter(bridge) -> None:
    ws = raw_client(bridge)
    obs = ask(ws, {"type": "reset", "id": 2, "seed": 0})["obs"]
    too_fast = small_steps(obs["proprio"][:16], 2, step=0.6)
    reply = ask(ws, {"type": "step", "id": 3, "actions": too_fast})
    assert reply["type"] == "error" and reply["code"] == "safety" and "rad/s" in reply["message"]
    nan = small_steps(obs["proprio"][:16], 1, step=0.0)
    nan[0, 0] = np.nan
    reply = ask(ws, {"type": "step", "id": 4, "actions": nan})
    assert reply["code"] == "safety" and "non-finite" in reply["message"]
    assert reply["status"]["t"] == 0  # the robot did not move
    ws.close()


def test_watchdog_holds_still_when_commands_stop(bridge, env_cfg) -> None:
    with make_backend("neo:neo-001", cfg_for(bridge, heartbeat_s=0.1), env_cfg) as neo:
        obs = neo.reset(seed=0)
        trips = neo.status["watchdog_trips"]
        time.sleep(1.0)  # heartbeats keep the watchdog (0.4 s) fed
        neo.observe()
        assert neo.status["watchdog_trips"] == trips and not neo.status["held"]
        # move two arm joints fast: the arm lags behind its last target when the commands stop
        chunk = small_steps(obs["proprio"][:16], 2, joint=0, step=0.25)
        chunk[:, 8] -= 0.25 * np.arange(1, 3)
        res = neo.step(chunk)
        q_stop = res.observations[-1]["proprio"][:16]
        assert np.abs(chunk[-1, [0, 8]] - q_stop[[0, 8]]).max() > 0.02  # where it would go without a hold
        neo.pause_heartbeats()
        time.sleep(1.5)
        held = neo.observe()
        assert neo.status["held"] and neo.status["watchdog_trips"] == trips + 1
        assert neo.status["t"] >= 2 + 5  # simulated time went on while it held
        np.testing.assert_allclose(held["proprio"][:14], q_stop[:14], atol=5e-3)
        neo.pause_heartbeats(False)
        res = neo.step(small_steps(held["proprio"][:16], 1, step=0.05))  # commands resume from the hold
        assert not neo.status["held"] and len(res.observations) == 1


def test_command_reference_is_the_held_pose_after_a_watchdog_hold(bridge, env_cfg) -> None:
    """What a planner rate-limits its next chunk from: the last accepted target while commands flow, the held
    pose after a watchdog hold (even one no reply has reported yet). A chunk from the stale target is refused,
    one from the reference runs."""
    with make_backend("neo:neo-001", cfg_for(bridge, heartbeat_s=0.1), env_cfg) as neo:
        obs = neo.reset(seed=0)
        np.testing.assert_allclose(neo.command_reference()[:14], obs["proprio"][:14], atol=1e-6)
        chunk = small_steps(obs["proprio"][:16], 2, joint=0, step=0.25)
        last = neo.step(chunk).observations[-1]
        np.testing.assert_allclose(neo.command_reference(), chunk[-1], atol=1e-6)
        neo.pause_heartbeats()
        time.sleep(1.5)  # the watchdog (0.4 s) trips; no reply has said so yet
        ref = neo.command_reference()
        assert neo.status["held"]
        fresh = neo.latest_observation()  # what the planner plans from: the reply command_reference asked for
        held = neo.observe()["proprio"][:16]
        np.testing.assert_allclose(fresh["proprio"][:16], held, atol=1e-6)
        assert fresh is not last  # a new reply, not the last chunk's final observation
        np.testing.assert_allclose(ref[:14], held[:14], atol=5e-3)
        assert abs(ref[0] - chunk[-1, 0]) > 0.02  # the arm lagged its last target when it stopped
        neo.pause_heartbeats(False)
        step = 0.25 * (1 - 1e-3)
        stale = chunk[-1].copy()
        stale[0] -= step
        with pytest.raises(SafetyViolation):
            neo.step(stale[None])
        fresh = ref.copy()
        fresh[0] -= step
        assert len(neo.step(fresh[None]).observations) == 1


def test_estop_latches_until_reset(bridge, env_cfg) -> None:
    with make_backend("neo:neo-001", cfg_for(bridge), env_cfg) as neo:
        obs = neo.reset(seed=0)
        neo.estop()
        assert neo.status["estopped"]
        for _ in range(2):
            with pytest.raises(SafetyViolation, match="estopped"):
                neo.step(small_steps(obs["proprio"][:16], 1, step=0.05))
        assert neo.observe()["rgb"].shape == (32, 32, 3)  # still observable
        obs = neo.reset(seed=0)
        assert not neo.status["estopped"]
        assert len(neo.step(small_steps(obs["proprio"][:16], 2, step=0.05)).observations) == 2


def test_estop_preempts_the_chunk_in_flight(bridge, env_cfg) -> None:
    with make_backend("neo:neo-001", cfg_for(bridge), env_cfg) as neo:
        obs = neo.reset(seed=0)
        chunk = np.repeat(obs["proprio"][None, :16], 250, axis=0)  # 250 control steps: over a second of sim
        timer = threading.Timer(0.3, neo.estop)
        timer.start()
        res = neo.step(chunk)
        timer.join()
        assert res.info["stopped"] and 0 < len(res.observations) < 250
        assert neo.status["estopped"]


def test_timeouts_raise_bridge_errors(env_cfg) -> None:
    from websockets.sync.server import serve

    s = socket.socket()  # nothing listening
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(BridgeError, match="cannot reach the NEO bridge"):
        make_backend("neo:x", BackendConfig(name="neo:x", port=port, token=TOKEN, timeout_s=1.0), env_cfg)
    with socket.socket() as silent:  # a TCP peer that never completes the WebSocket handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cfg = BackendConfig(name="neo:x", port=silent.getsockname()[1], token=TOKEN, timeout_s=0.5)
        with pytest.raises(BridgeError, match="did not complete the handshake within 0.5 s"):
            make_backend("neo:x", cfg, env_cfg)

    def mute(conn):  # a bridge that welcomes us and then never answers
        msg = P.unpack(conn.recv())
        conn.send(P.pack({"type": "welcome", "id": msg["id"], "version": 1, "robot_id": "x",
                          "action_low": ACTION_LOW, "action_high": ACTION_HIGH, "control_hz": 10.0,
                          "image_size": 32, "watchdog_s": 1.0}))
        for _ in conn:
            pass

    with serve(mute, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        cfg = BackendConfig(name="neo:x", port=server.socket.getsockname()[1], token=TOKEN, timeout_s=0.3,
                            heartbeat_s=0)
        neo = make_backend("neo:x", cfg, env_cfg)
        t0 = time.monotonic()
        with pytest.raises(BridgeError, match="did not answer 'reset' within 0.3 s"):
            neo.reset(seed=0)
        assert time.monotonic() - t0 < 2.0
        neo.close()
        with pytest.raises(BridgeError, match="is down"):
            neo.observe()
        server.shutdown()


@pytest.mark.parametrize("change, match", [
    ({"control_hz": 20.0}, "runs at 20 Hz but env.control_hz is 10"),  # the planner's rate limit would be wrong
    ({"control_hz": float("nan")}, "invalid control rate"),
    ({"control_hz": None}, "malformed welcome"),
    ({"action_low": None}, "malformed welcome|invalid joint limits"),
    ({"action_high": np.full(16, np.nan, np.float32)}, "invalid joint limits"),
    ({"action_low": np.zeros(3, np.float32)}, "invalid joint limits"),
])
def test_a_bad_welcome_is_refused_and_the_link_closed(env_cfg, change, match) -> None:
    from websockets.sync.server import serve

    closed = threading.Event()

    def liar(conn):  # a bridge whose welcome disagrees with this config or is malformed
        msg = P.unpack(conn.recv())
        welcome = {"type": "welcome", "id": msg["id"], "version": 1, "robot_id": "x", "action_low": ACTION_LOW,
                   "action_high": ACTION_HIGH, "control_hz": 10.0, "image_size": 32, "watchdog_s": 1.0}
        conn.send(P.pack({**welcome, **change}))
        for _ in conn:
            pass
        closed.set()  # the client closed the link

    with serve(liar, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        cfg = BackendConfig(name="neo:x", port=server.socket.getsockname()[1], token=TOKEN, timeout_s=1.0,
                            heartbeat_s=0)
        with pytest.raises(BridgeError, match=match):
            make_backend("neo:x", cfg, env_cfg)
        assert closed.wait(5.0)
        server.shutdown()


def test_same_episode_through_sim_and_neo(bridge, env_cfg) -> None:
    """Same task, seed and actions: identical observations, results and states through both backends."""
    from envs.tasks import sample_task

    task = sample_task("place", seed=11)
    with make_backend("neo:neo-001", cfg_for(bridge, heartbeat_s=0.1), env_cfg) as neo, \
            SimBackend(BackendConfig(), env_cfg) as sim:
        obs_s, obs_n = sim.reset(task=task, seed=11), neo.reset(task=task, seed=11)
        for k in ("rgb", "proprio"):
            np.testing.assert_array_equal(obs_s[k], obs_n[k])
        assert neo.task == sim.task == task
        initial = neo.get_state()
        rng = np.random.default_rng(0)
        q = obs_s["proprio"][:16]
        for i in range(3):
            chunk = np.clip(q + np.cumsum(rng.uniform(-0.08, 0.08, (4, 16)), 0), ACTION_LOW, ACTION_HIGH)
            rs, rn = sim.step(chunk.astype(np.float32)), neo.step(chunk.astype(np.float32))
            assert (rs.success, rs.done, rs.info) == (rn.success, rn.done, rn.info)
            for a, b in zip(rs.observations, rn.observations, strict=True):
                np.testing.assert_array_equal(a["rgb"], b["rgb"])
                np.testing.assert_array_equal(a["proprio"], b["proprio"])
            q = chunk[-1]
        state_s = sim.get_state()
        state_n = neo.get_state()
        assert state_s.keys() == state_n.keys()
        for k in state_s:
            np.testing.assert_array_equal(state_s[k], state_n[k])
        assert neo.scene_description() == sim.scene_description()
        # a recorded state replays through either backend: mid-episode, then the initial state exactly
        mid_s, mid_n = sim.reset(state=state_n), neo.reset(state=state_s)
        np.testing.assert_array_equal(mid_s["rgb"], mid_n["rgb"])
        np.testing.assert_array_equal(mid_n["proprio"], rn.observations[-1]["proprio"])
        for backend in (sim, neo):
            replay = backend.reset(state=initial)
            np.testing.assert_array_equal(replay["rgb"], obs_n["rgb"])
            np.testing.assert_array_equal(replay["proprio"], obs_n["proprio"])


def test_neo_bridge_command_serves_until_terminated(env_cfg, capsys) -> None:
    """`flywheel neo-bridge` (the command function, in-process): serves on loopback, stops on SIGTERM."""
    import argparse
    import os
    import signal
    from dataclasses import dataclass, field

    from omegaconf import OmegaConf

    from flywheel.commands import neo as neo_cmd

    @dataclass
    class Conf:  # the two groups the command reads from flywheel.config.Config
        env: EnvConfig = field(default_factory=lambda: ENV_CFG)
        backend: BackendConfig = field(default_factory=BackendConfig)

    parser = argparse.ArgumentParser()
    neo_cmd.add_parser(parser.add_subparsers())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parser.parse_args(["neo-bridge", "--port", str(port), "--token", TOKEN, "--robot-id", "neo-042"])
    seen: dict = {}

    def connect():
        cfg = BackendConfig(name="neo:neo-042", port=port, token=TOKEN, timeout_s=30.0)
        for _ in range(300):  # until the command has built its env and listens
            try:
                return make_backend(cfg.name, cfg, ENV_CFG)
            except BridgeError as exc:
                if "cannot reach" not in str(exc):
                    raise
                time.sleep(0.1)
        raise AssertionError("neo-bridge never listened")

    def drive() -> None:
        try:
            with connect() as neo:
                obs = neo.reset(seed=5)
                seen["steps"] = len(neo.step(small_steps(obs["proprio"][:16], 2, step=0.05)).observations)
                seen["instruction"] = neo.task.instruction
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=drive, daemon=True).start()
    previous = signal.getsignal(signal.SIGTERM)
    assert args.func(args, OmegaConf.structured(Conf)) == 0
    assert signal.getsignal(signal.SIGTERM) == previous
    assert seen["steps"] == 2 and seen["instruction"]
    assert f"listening on ws://127.0.0.1:{port}" in capsys.readouterr().out


@pytest.mark.slow
def test_neo_bridge_subprocess_on_loopback(env_cfg) -> None:
    """`flywheel neo-bridge` in a subprocess, exactly as on a robot (slow: the CLI imports the whole product)."""
    with spawn_bridge(TOKEN, ["env.image_size=32"], robot_id="neo-042", timeout_s=180) as proc:
        cfg = BackendConfig(name="neo:neo-042", port=proc.port, token=TOKEN)
        with make_backend(cfg.name, cfg, env_cfg) as neo:
            obs = neo.reset(seed=5)
            res = neo.step(small_steps(obs["proprio"][:16], 2, step=0.05))
            assert len(res.observations) == 2 and res.observations[-1]["rgb"].shape == (32, 32, 3)
            assert neo.task.instruction


def test_unknown_backend_names(env_cfg) -> None:
    with pytest.raises(EnvError, match="unknown backend 'gazebo'"):
        make_backend("gazebo", BackendConfig(), env_cfg)
    with pytest.raises(EnvError, match="needs a robot id"):
        make_backend("neo", BackendConfig(), env_cfg)


def test_bridge_needs_a_token(env_cfg) -> None:
    with pytest.raises(EnvError, match="needs a shared secret"):
        start_bridge("", env_cfg)


def test_arrays_round_trip_without_pickle() -> None:
    msg = {"type": "state", "id": 3, "state": {"physics": np.linspace(0, 1, 5), "steps": np.array(4), "t": np.arange(6.0).reshape(2, 3).T,
                                               "task": np.array('{"family": "pick"}'), "rgb": np.ones((2, 2, 3), np.uint8)}}
    back = P.unpack(P.pack(msg))["state"]
    for k, v in msg["state"].items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(P.ProtocolError, match="cannot send arrays of dtype object"):
        P.pack({"type": "x", "id": 1, "a": np.array([None])})


def test_the_hold_target_never_carries_a_broken_reading() -> None:
    from envs.neo.bridge import hold_target

    current = np.clip(HOME_QPOS.astype(np.float64), ACTION_LOW, ACTION_HIGH)
    last = current + 0.01
    t = hold_target(current, ACTION_LOW, ACTION_HIGH, last)
    assert np.allclose(t[:14], current[:14]) and np.allclose(t[14:], last[14:])  # grippers keep their target
    broken = current.copy()
    broken[3] = np.nan  # a broken encoder
    t = hold_target(broken, ACTION_LOW, ACTION_HIGH, last)
    assert np.isfinite(t).all() and t[3] == np.float32(last[3])
    assert not np.isfinite(hold_target(broken, ACTION_LOW, ACTION_HIGH, None)).all()  # the caller then steps nothing
