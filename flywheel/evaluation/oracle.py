"""A privileged stand-in for the world model, for research diagnostics only (sim backend): it "imagines"
what the scripted expert would do from the robot's actual state, by simulating it.

Plugged into the imagine-then-act planner in place of the world model, it measures the planner and the
IDM with a perfect imagination: every planning step the IDM extracts actions from a real rendered video
that starts at the robot's current frame. The success rate of that policy is the ceiling imagine-then-act
can reach with these IDM and planner settings, and its gap to the real planner is what the world model
costs (bench/bench_ttc.py --controls oracle_wm).

How a future is made: the expert's script is time-indexed (a generator, which cannot be copied), and
a robot that lags it would be shown jumping to where the expert already is. So a shadow env replays the
expert's own episode up to the robot's step count, the step whose joint positions are nearest to the
robot's is taken as the robot's progress, the expert is replayed again to that step, the shadow is set
to the robot's real state, the expert's commands are shifted by the robot's offset from the expert's own
joints at that step (`ScriptedExpert.shift_arms`: it goes on at its own speed from where the robot is,
instead of jumping to where it had commanded), and it continues for the clip's length, rendering each
frame. It keeps the rest of its plan (goals, grasp points read in its replay). Every candidate is the
same video: the expert is deterministic. `OracleActions` is the matching control for the IDM: it returns
the actions that made the video (bench/bench_ttc.py --controls oracle_actions).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from envs.errors import EnvError


@dataclass
class OracleConfig:
    """What the planner reads from a world model's `cfg`."""

    cond_frames: int = 1
    temporal_factor: int = 1
    action_conditioning: bool = False


class ExpertOracleWorldModel:
    """`imagine(...)` as the world model's, from a shadow simulation of the scripted expert.

    `state_fn()` returns the robot's current sim state (`SimBackend.get_state`); `make_expert(env)` builds
    the expert policy on the shadow env the same way for every plan (same seed, same noise)."""

    success_head = None  # no learned success estimate: the planner's success score is NaN (ignored)

    def __init__(self, env_cfg: Any, state_fn: Callable[[], dict], make_expert: Callable[[Any], Any]) -> None:
        from envs.tabletop import HumanoidTabletopEnv

        self.cfg = OracleConfig()
        self.shadow = HumanoidTabletopEnv(env_cfg)
        self.state_fn, self.make_expert = state_fn, make_expert
        self.replayed_steps = 0  # expert steps replayed in the last call (for the logs)
        self.last_actions: np.ndarray | None = None  # (T-1, A) the actions that made the last video
        self.last_joints: np.ndarray | None = None  # (T, A) the joint positions of its frames

    def imagine(self, frames: torch.Tensor, caption: str, n: int = 1, steps: int = 0, guidance: float = 1.0,
                seed: int = 0, num_frames: int = 9, churn: float = 0.0) -> torch.Tensor:
        """`(n, num_frames, 3, H, W)` in [0, 1]: the expert's next `num_frames - 1` steps from the current
        state, rendered, repeated n times. `frames`, `caption`, `steps`, `guidance`, `seed`, `churn` are
        unused (the oracle samples nothing)."""
        real = self.state_fn()
        task = json_task(real)
        env = self.shadow
        q_real = np.asarray(real_joints(real, env), np.float64)
        trace: list[np.ndarray] = []  # the expert's own joints at each of its steps so far
        self._replay(task, int(real["steps"]), trace)
        dist = np.array([np.linalg.norm(q - q_real) for q in trace])
        done = len(dist) - 1 - int(np.argmin(dist[::-1]))  # the robot's progress (the latest of ties)
        expert = self._replay(task, done)
        own = env.joint_qpos()  # the expert's own joints at that step
        env.set_state(real)
        # shift the expert's commands by how far the robot's arms are from its own at that step: it goes
        # on with its current motion from where the robot is, at its own speed (on its path: no change)
        getattr(expert, "impl", expert).shift_arms((q_real - own)[:14])
        video = [env._render().copy()]
        joints = [env.joint_qpos()]
        obs = {"rgb": video[0]}
        actions = []
        for _ in range(num_frames - 1):
            actions.append(_one(expert.act(obs)))
            obs, *_ = env.step(actions[-1])
            video.append(obs["rgb"].copy())
            joints.append(env.joint_qpos())
        self.replayed_steps, self.last_actions, self.last_joints = done, np.stack(actions), np.stack(joints)
        v = torch.from_numpy(np.stack(video)).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)
        return v[None].expand(n, -1, -1, -1, -1).clone()

    def _replay(self, task: dict, steps: int, trace: list[np.ndarray] | None = None) -> Any:
        """The expert on the shadow env, its script advanced `steps` steps from the episode's start;
        `trace` gets the shadow's joint positions at steps 0..`steps`."""
        env = self.shadow
        env.reset(options={"task": task})
        expert = self.make_expert(env)
        expert.reset(task, "", None)
        obs: dict = {}
        for k in range(steps + 1):
            if trace is not None:
                trace.append(env.joint_qpos())
            if k < steps:
                obs, *_ = env.step(_one(expert.act(obs)))
        return expert

    def close(self) -> None:
        self.shadow.close()


class OracleActions:
    """An IDM stand-in that "extracts" exactly the actions that made the oracle's last video: with it the
    planner executes the expert itself, through everything else it does (chunking, replanning, scoring,
    rate limiting, the safety filter). The control that says how much of the oracle's gap is the IDM's."""

    def __init__(self, oracle: ExpertOracleWorldModel) -> None:
        self.oracle = oracle

    def extract(self, video: torch.Tensor, proprio0: torch.Tensor, seed: int = 0) -> Any:
        from policies.idm.modeling_idm import Extraction

        a = self.oracle.last_actions
        if a is None or len(a) != video.shape[0] - 1:
            raise EnvError("OracleActions needs the oracle's video of the same length, imagined just before")
        return Extraction(actions=torch.as_tensor(a, dtype=torch.float32), spread=torch.zeros(len(a)))


class OracleJoints:
    """An IDM stand-in that reads the joint positions of the oracle's last video with the IDM's
    `extract_joints`: what the planner gets from a world model that imagines the joints (`imagine_joints`)
    perfectly. Against `oracle_actions`, what reading targets off joint positions loses."""

    def __init__(self, oracle: ExpertOracleWorldModel, idm: Any) -> None:
        self.oracle, self.idm = oracle, idm

    def extract(self, video: torch.Tensor, proprio0: torch.Tensor, seed: int = 0) -> Any:
        q = self.oracle.last_joints
        if q is None or len(q) != video.shape[0]:
            raise EnvError("OracleJoints needs the oracle's video of the same length, imagined just before")
        return self.idm.extract_joints(torch.as_tensor(q, dtype=torch.float32), proprio0)


NOISE_MODES = ("independent", "shared", "undershoot")


class NoisyOracleJoints(OracleJoints):
    """`OracleJoints` with an arm error of known size: what the planner gets from a world model that imagines
    the joints that well. The error's mean absolute size over the first `horizon` arm targets is `error` times
    holding still's error there, the measure of bench/bench_imagine_motion.py's `joints_imag_vs_hold` (0: the
    oracle; 1: as far off as not moving). The grips stay the oracle's. Where the expert does not move its arms
    there is no error to scale. Its shape (`mode`):

    - `independent`: a joint-space offset growing linearly over the chunk (a reach aimed off in a random
      direction), one draw per candidate seed: errors that replanning and best-of-N can average out;
    - `shared`: the same, drawn once per episode (from `episode_seed`, set before it) for every candidate and
      planning step: a systematic error, as a world model that misjudges a scene the same way in every draw;
    - `undershoot`: each target pulled back toward the measured joints by `error` of the way (the arm goes the
      right way, `1 - error` as far): a world model that imagines too little motion."""

    def __init__(self, oracle: ExpertOracleWorldModel, idm: Any, error: float, horizon: int,
                 mode: str = "independent") -> None:
        if not (np.isfinite(error) and error >= 0):
            raise ValueError(f"NoisyOracleJoints: error must be finite and >= 0, got {error}")
        if horizon < 1:
            raise ValueError(f"NoisyOracleJoints: horizon must be >= 1, got {horizon}")
        if mode not in NOISE_MODES:
            raise ValueError(f"NoisyOracleJoints: mode must be one of {NOISE_MODES}, got {mode!r}")
        super().__init__(oracle, idm)
        self.error, self.horizon, self.mode = float(error), int(horizon), mode
        self.episode_seed = 0

    def extract(self, video: torch.Tensor, proprio0: torch.Tensor, seed: int = 0) -> Any:
        from envs.robot import LEFT_ARM, RIGHT_ARM

        arms = slice(LEFT_ARM.start, RIGHT_ARM.stop)
        ex = super().extract(video, proprio0, seed)
        acts = ex.actions.clone().double()  # (T-1, A)
        arm, start = acts[:, arms], proprio0[arms].double()
        if self.mode == "undershoot":
            acts[:, arms] = arm + self.error * (start - arm)
            return type(ex)(actions=acts.float(), spread=ex.spread)
        h = min(self.horizon, len(arm))
        hold = (arm[:h] - start).abs().mean()
        rng = np.random.default_rng(self.episode_seed if self.mode == "shared" else seed)
        direction = torch.from_numpy(rng.standard_normal(arm.shape[1]))
        offset = torch.arange(1, len(arm) + 1, dtype=torch.float64)[:, None] / h * direction  # (T-1, 14)
        acts[:, arms] = arm + offset * (self.error * hold / offset[:h].abs().mean())
        return type(ex)(actions=acts.float(), spread=ex.spread)


class OracleGrips:
    """Half the IDM, half the oracle: the IDM's extraction of the oracle's video with either its gripper
    columns (`take="grips"`) or its arm columns (`take="arms"`) replaced by the oracle's own actions. With
    the oracle's grips the planner measures how far the IDM's arms alone get; with the oracle's arms, its
    grips alone. The spread stays the IDM's."""

    def __init__(self, oracle: ExpertOracleWorldModel, idm: Any, take: str = "grips") -> None:
        from envs.robot import GRIPPER_INDEX

        if take not in ("grips", "arms"):
            raise ValueError(f"OracleGrips take must be 'grips' or 'arms', got {take!r}")
        self.oracle, self.idm, self.take = oracle, idm, take
        self.grips = sorted(GRIPPER_INDEX.values())

    def extract(self, video: torch.Tensor, proprio0: torch.Tensor, seed: int = 0) -> Any:
        ex = self.idm.extract(video, proprio0, seed=seed)
        truth = OracleActions(self.oracle).extract(video, proprio0).actions
        out = truth.clone() if self.take == "arms" else ex.actions.clone()
        src = ex.actions if self.take == "arms" else truth
        out[:, self.grips] = src[:, self.grips]
        return type(ex)(actions=out, spread=ex.spread)


def real_joints(state: dict, env: Any) -> np.ndarray:
    """The robot's joint positions in a sim state, read by setting the shadow env to it."""
    env.set_state(state)
    return env.joint_qpos().copy()


def json_task(state: dict) -> dict:
    """The task dict stored in an env state."""
    import json

    try:
        return json.loads(str(state["task"]))
    except (KeyError, ValueError) as e:
        raise EnvError(f"the oracle needs a sim state with its task (HumanoidTabletopEnv.get_state): {e}") from e


def _one(actions: Any) -> np.ndarray:
    """The first action of a policy's output (a PolicyOutput chunk or a bare action)."""
    a = np.asarray(getattr(actions, "actions", actions), np.float32)
    return a.reshape(-1, a.shape[-1])[0]
