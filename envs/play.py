"""Play data: random, non-task motions near objects (unfiltered), and the episode collector.

Play is what the inverse dynamics model trains on (the seeds use hundreds of hours of unfiltered
play): reaches to random points around random objects with random hand yaw/tilt, grasps and releases
at random, bimanual and single-arm, at random speeds, plus small joint-space wiggles. Nothing is
filtered by success.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.expert import ScriptedExpert, grasp_quat
from envs.robot import ARM_SLICE, GRIPPER_CLOSED, GRIPPER_OPEN
from envs.scene import TABLE_Z
from envs.tasks import TaskInstance


class PlayPolicy(ScriptedExpert):
    """Random motion near objects; `reset(task)` / `act(obs) -> action (16,)` like the expert."""

    def __init__(self, env, seed: int = 0) -> None:
        super().__init__(env, noise=0.0, seed=seed)

    def reset(self, task: TaskInstance | dict | None = None) -> None:
        super().reset(task)
        self._gen = self._script_play()

    def _script_play(self) -> Iterator[np.ndarray]:
        env, rng = self.env, self.rng
        names = sorted(env.scene_description()["objects"], key=lambda o: o["name"])
        while True:
            kind = rng.choice(["reach", "reach", "grasp", "both", "wiggle"])
            obj = names[int(rng.integers(len(names)))]["name"]
            p = env.object_pos(obj)
            side = self._side_for(p[1] + rng.normal(0, 0.05))
            speed = float(rng.uniform(0.2, 0.7))
            if kind == "wiggle":
                sl = ARM_SLICE[side]
                goal = self.q[sl] + rng.normal(0.0, 0.15, 7)
                yield from self._move({}, joint_goals={side: goal}, settle=0)
                continue
            target = self._near(p)
            quat = grasp_quat(float(rng.uniform(-0.8, 0.8)), float(rng.uniform(-0.6, 0.0)))
            grips = {side: float(rng.choice([GRIPPER_OPEN, GRIPPER_CLOSED, rng.uniform(0, GRIPPER_OPEN)]))}
            goals = {side: (target, quat)}
            if kind == "both":
                other = "right" if side == "left" else "left"
                q2 = names[int(rng.integers(len(names)))]["name"]
                goals[other] = (self._near(env.object_pos(q2)), grasp_quat(float(rng.uniform(-0.8, 0.8)), -0.35))
            yield from self._move(goals, speed, grips=grips, settle=int(rng.integers(0, 3)))
            if kind == "grasp":  # go down, close, lift a little, maybe let go
                low = np.array([p[0], p[1], max(p[2], TABLE_Z + 0.034)]) + rng.normal(0, 0.015, 3) * [1, 1, 0]
                yield from self._move({side: (low, quat)}, 0.3, grips={side: GRIPPER_OPEN})
                yield from self._grip({side: GRIPPER_CLOSED}, steps=int(rng.integers(2, 4)))
                yield from self._move({side: (low + [0, 0, rng.uniform(0.03, 0.15)], quat)}, 0.3)
                if rng.random() < 0.5:
                    yield from self._grip({side: GRIPPER_OPEN}, steps=2)

    def _near(self, p: np.ndarray) -> np.ndarray:
        rng = self.rng
        return np.array([p[0] + rng.uniform(-0.08, 0.08), p[1] + rng.uniform(-0.08, 0.08),
                         TABLE_Z + rng.uniform(0.05, 0.22)])


@dataclass
class EpisodeData:
    """One rollout: frames uint8 (T+1, H, W, 3), proprio float32 (T+1, 32), actions float32 (T, 16)."""

    frames: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    success: bool
    reward: float
    initial_state: dict[str, np.ndarray]
    task: dict[str, Any]
    infos: list[dict[str, Any]] = field(default_factory=list)
    scene: dict[str, Any] = field(default_factory=dict)  # `scene_description()` at reset, for the caption

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def collect_episode(env, policy, task: TaskInstance | dict | None, seed: int, max_steps: int | None = None,
                    stop_on_success: bool = True) -> EpisodeData:
    """Reset `env` to `task` (or a training task drawn from `seed`), run `policy` and record it.

    `policy` has `reset(task)` and `act(obs) -> (16,)`. Stops at success (if `stop_on_success`), at
    truncation, or after `max_steps` (default: the env's max_steps).
    """
    env_u = env.unwrapped if hasattr(env, "unwrapped") else env
    opts = {"task": task} if task is not None else None
    obs, info = env.reset(seed=seed, options=opts)
    initial_state = env_u.get_state()
    scene = env_u.scene_description()
    policy.reset(env_u.task)
    frames, proprio, actions, infos = [obs["rgb"]], [obs["proprio"]], [], []
    reward, ok = 0.0, False
    limit = max_steps if max_steps is not None else env_u.cfg.max_steps
    for _ in range(limit):
        a = np.asarray(policy.act(obs), dtype=np.float32)
        obs, r, term, trunc, info = env.step(a)
        frames.append(obs["rgb"])
        proprio.append(obs["proprio"])
        actions.append(a)
        infos.append({"success": bool(info["success"])})
        reward += float(r)
        ok = bool(info["success"])
        if (term and stop_on_success) or trunc:
            break
    return EpisodeData(frames=np.stack(frames), proprio=np.stack(proprio).astype(np.float32),
                       actions=np.stack(actions).astype(np.float32), success=ok, reward=reward,
                       initial_state=initial_state, task=env_u.task.to_dict(), infos=infos, scene=scene)
