"""One interface for every robot backend, and the registry behind `make_backend`.

`sim` runs the MuJoCo humanoid tabletop env in this process; `neo:<robot_id>` is a client of the NEO
bridge (envs/neo/). Both take an action chunk `(H, 16)` of joint-position targets, pass it through the
`SafetyFilter` first, and return a `StepResult` with one observation per executed step.
Heavy imports (MuJoCo, websockets) happen inside the factories.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from envs.config import BackendConfig, EnvConfig, SafetyConfig
from envs.errors import EnvError, SafetyViolation
from envs.safety import SafetyFilter

Obs = dict[str, np.ndarray]  # rgb uint8 (H, W, 3), proprio float32 (32,)
N_ARM_JOINTS = 14  # the first 14 action dims are arm joints (radians); the last 2 are grippers


@dataclass
class StepResult:
    """What one action chunk did: an observation after each executed step, and how the episode stands."""

    observations: list[Obs]
    success: bool
    done: bool
    info: dict[str, Any] = field(default_factory=dict)  # plain JSON: steps, reward, terminated, ...


class Backend(ABC):
    """A robot the policy can drive: reset to a task and seed (or a recorded state), step chunks, observe."""

    @abstractmethod
    def reset(self, task: Any = None, seed: int | None = None, state: dict | None = None) -> Obs:
        """Start an episode on `task` (TaskInstance or its dict) with `seed`, or replay a recorded `state`."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> StepResult:
        """Execute a chunk of joint-position targets (H, 16) after the safety filter; stop early when done."""

    @abstractmethod
    def observe(self) -> Obs:
        """The current observation without moving."""

    @abstractmethod
    def scene_description(self) -> dict:
        """Objects, colours, positions and relations of the current scene (for caption upsampling)."""

    @abstractmethod
    def get_state(self) -> dict[str, np.ndarray]:
        """The exact simulator state (savable with np.savez) to replay this moment with reset(state=...)."""

    @abstractmethod
    def estop(self) -> None:
        """Emergency stop: hold still and refuse every step until the next reset."""

    @abstractmethod
    def close(self) -> None:
        """Release the robot (the bridge holds still once commands stop)."""

    def command_reference(self) -> np.ndarray | None:
        """(16,) the joint targets the safety filter will rate-limit the next chunk's first target from (the
        last accepted target, or the pose the robot holds after a reset or a watchdog hold); None if unknown.
        A planner that limits its own chunks to the filter's rate starts from this, not from what it last sent."""
        safety = getattr(self, "safety", None)
        return None if safety is None else safety.reference

    def latest_observation(self) -> Obs | None:
        """The newest observation this backend holds, without a round trip: the last step's or reset's, or the
        one `command_reference` just asked a bridge for (after a watchdog hold, where the robot stands now, not
        where the last chunk left it). None before reset. A planner plans from this."""
        return getattr(self, "_obs", None)

    # Subclasses set `_low`, `_high` (the joint-target limits), `_task` (on reset) and `_obs` (the newest
    # observation).
    _low: np.ndarray
    _high: np.ndarray
    _task: Any = None

    @property
    def action_low(self) -> np.ndarray:
        """(16,) float32 lower joint-target limits."""
        return self._low

    @property
    def action_high(self) -> np.ndarray:
        """(16,) float32 upper joint-target limits."""
        return self._high

    @property
    def task(self) -> Any:
        """The current `envs.tasks.TaskInstance` (None before reset)."""
        return self._task

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers shared by the sim backend, the NEO client and the NEO bridge -------------------------------
class HandWorkspace:
    """The workspace check of the safety filter: forward kinematics of the robot MJCF for each target.

    Both grasp points must stay in a box in front of the robot and above the table top (the robot's
    frame is the scene's), grown by `margin` metres. Called with targets (H, 16), returns (H,) bool.
    """

    LOW = (0.0, -0.55, 0.01)  # x, y, z above the table top (m)
    HIGH = (0.80, 0.55, 1.45)  # z absolute (m)

    def __init__(self, margin: float = 0.0) -> None:
        import mujoco

        from envs.robot import JOINT_NAMES, ROBOT_XML
        from envs.scene import TABLE_Z

        self._mj = mujoco
        self._model = mujoco.MjModel.from_xml_path(ROBOT_XML)
        self._data = mujoco.MjData(self._model)
        self._qadr = np.array([self._model.joint(n).qposadr[0] for n in JOINT_NAMES])  # (16,)
        self._sites = np.array([self._model.site(f"{side}_grasp").id for side in ("left", "right")])
        self.low = np.array([self.LOW[0], self.LOW[1], TABLE_Z + self.LOW[2]]) - margin  # (3,)
        self.high = np.array(self.HIGH) + margin  # (3,)

    def positions(self, targets: np.ndarray) -> np.ndarray:
        """Grasp-point positions (H, 2, 3) [left, right] for joint targets (H, 16)."""
        out = np.empty((len(targets), 2, 3))
        for t, q in enumerate(np.asarray(targets, np.float64)):
            self._data.qpos[self._qadr] = q
            self._mj.mj_kinematics(self._model, self._data)
            out[t] = self._data.site_xpos[self._sites]
        return out

    def __call__(self, targets: np.ndarray) -> np.ndarray:
        p = self.positions(targets)  # (H, 2, 3)
        return np.all((p >= self.low) & (p <= self.high), axis=(1, 2))  # (H,)


def make_safety_filter(cfg: SafetyConfig, low: np.ndarray, high: np.ndarray, control_hz: float,
                       name: str = "safety") -> SafetyFilter:
    """The filter for an action space: for the 16 joint targets, velocity limited on the arm joints only
    and both hands kept in the `HandWorkspace`; for any other space (e.g. `ee_delta`) only shape,
    NaN/inf and bounds are checked."""
    low = np.asarray(low, np.float32)
    joint_space = low.shape[0] == 16
    mask = np.ones(low.shape[0], bool)
    if joint_space:
        mask[N_ARM_JOINTS:] = False  # gripper targets are not in radians
    try:
        from envs.robot import JOINT_NAMES

        names = list(JOINT_NAMES) if len(JOINT_NAMES) == low.shape[0] else None
    except ImportError:
        names = None
    workspace = HandWorkspace(cfg.workspace_margin) if joint_space else None
    f = SafetyFilter.from_config(cfg, low, high, 1.0 / control_hz, velocity_mask=mask, joint_names=names,
                                 workspace=workspace, name=name)
    if not joint_space:
        f.max_joint_velocity = None  # deltas, not targets
    return f


def joint_positions(obs: Obs, dim: int) -> np.ndarray | None:
    """The actuated joints' positions (dim,) from an observation's proprio `[qpos, qvel]`."""
    p = np.asarray(obs.get("proprio", ()), np.float32).reshape(-1)
    return p[:dim].copy() if p.shape[0] >= 2 * dim else None


def execute_chunk(env: Any, actions: np.ndarray, should_stop: Callable[[], bool] | None = None) -> StepResult:
    """Step a gymnasium env through `actions` (H, D) (already filtered); stop at done or `should_stop()`."""
    observations: list[Obs] = []
    rewards: list[float] = []
    terminated = truncated = success = stopped = False
    for a in actions:
        if should_stop is not None and should_stop():
            stopped = True
            break
        obs, reward, terminated, truncated, info = env.step(a)
        observations.append(obs)
        rewards.append(float(reward))
        success = bool(info.get("success", False))
        if terminated or truncated:
            break
    info = {"steps": len(observations), "reward": float(sum(rewards)), "rewards": rewards,
            "terminated": bool(terminated), "truncated": bool(truncated), "stopped": stopped}
    return StepResult(observations, success, bool(terminated or truncated), info)


def task_from_dict(d: Any) -> Any:
    """A TaskInstance from the env's `info["task"]` dict (None stays None)."""
    if d is None or not isinstance(d, dict):
        return d
    from envs.tasks import TaskInstance

    return TaskInstance.from_dict(d)


def reset_options(task: Any, state: dict | None) -> dict[str, Any] | None:
    options: dict[str, Any] = {}
    if task is not None:
        options["task"] = task
    if state is not None:
        options["state"] = state
    return options or None


# -- the in-process simulator ----------------------------------------------------------------------
class SimBackend(Backend):
    """The MuJoCo humanoid tabletop env in this process, behind the safety filter."""

    def __init__(self, cfg: BackendConfig, env_cfg: EnvConfig, env: Any = None) -> None:
        if env is None:
            from envs.tabletop import HumanoidTabletopEnv

            env = HumanoidTabletopEnv(env_cfg)
        self.env = env
        self._low = np.asarray(env.action_space.low, np.float32)
        self._high = np.asarray(env.action_space.high, np.float32)
        self.safety = make_safety_filter(cfg.safety, self._low, self._high, env_cfg.control_hz, "sim-safety")
        self._obs: Obs | None = None
        self._task: Any = None
        self._done = False
        self._estopped = False

    def reset(self, task: Any = None, seed: int | None = None, state: dict | None = None) -> Obs:
        obs, info = self.env.reset(seed=seed, options=reset_options(task, state))
        self._obs, self._task = obs, task_from_dict(info.get("task"))
        self._done = self._estopped = False
        self.safety.reset(joint_positions(obs, self._low.shape[0]))
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        if self._obs is None:
            raise EnvError("sim backend: call reset() before step()")
        if self._estopped:
            raise SafetyViolation("sim backend: e-stop is latched; reset() to clear it")
        if self._done:
            raise EnvError("sim backend: the episode is over (done); reset() first")
        chunk = self.safety.check(actions)  # (H, 16) float32, or SafetyViolation
        result = execute_chunk(self.env, chunk)
        if result.observations:
            self._obs = result.observations[-1]
        self._done = result.done
        return result

    def observe(self) -> Obs:
        if self._obs is None:
            raise EnvError("sim backend: call reset() before observe()")
        return self._obs

    def scene_description(self) -> dict:
        return self.env.scene_description()

    def get_state(self) -> dict[str, np.ndarray]:
        return self.env.get_state()

    def estop(self) -> None:
        self._estopped = True  # simulated time only moves on step, so refusing steps holds still

    def close(self) -> None:
        self.env.close()


# -- registry ----------------------------------------------------------------------------------------
BackendFactory = Callable[[str, BackendConfig, EnvConfig], Backend]  # (argument after ':', cfg, env_cfg)
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(kind: str, factory: BackendFactory) -> None:
    """Register `kind` so `make_backend("kind[:arg]", ...)` calls `factory(arg, cfg, env_cfg)`."""
    _REGISTRY[kind] = factory


def _make_sim(arg: str, cfg: BackendConfig, env_cfg: EnvConfig) -> Backend:
    if arg:
        raise EnvError(f"backend 'sim' takes no argument, got 'sim:{arg}'")
    return SimBackend(cfg, env_cfg)


def _make_neo(arg: str, cfg: BackendConfig, env_cfg: EnvConfig) -> Backend:
    if not arg:
        raise EnvError("backend 'neo' needs a robot id: 'neo:<robot_id>'")
    from envs.neo.client import NeoBackend

    return NeoBackend(arg, cfg, env_cfg)


register_backend("sim", _make_sim)
register_backend("neo", _make_neo)


def make_backend(name: str, cfg: BackendConfig | None = None, env_cfg: EnvConfig | None = None) -> Backend:
    """A backend by name: "sim" or "neo:<robot_id>" (the NEO bridge at cfg.host:cfg.port)."""
    kind, _, arg = str(name).partition(":")
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise EnvError(f"unknown backend {name!r}: expected one of "
                       f"{', '.join(k + (':<robot_id>' if k == 'neo' else '') for k in _REGISTRY)}")
    return factory(arg, cfg or BackendConfig(), env_cfg or EnvConfig())
