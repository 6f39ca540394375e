"""Policies that need no model: `random` (uniform joint targets near the current pose) and
`scripted_expert` / `play` (the env's IK expert and play motions, acting from the backend's scene)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from policies.base import Policy, PolicyOutput
from policies.errors import PolicyError


class RandomPolicy(Policy):
    """Random joint targets within `max_delta` rad of the current pose, clipped to the action limits."""

    name = "random"

    def __init__(self, cfg: Any, action_low: np.ndarray | None = None, action_high: np.ndarray | None = None,
                 seed: int = 0, max_delta: float = 0.1, chunk: int = 1, **_: Any):
        from envs.robot import ACTION_HIGH, ACTION_LOW

        self.low = np.asarray(ACTION_LOW if action_low is None else action_low, np.float32)
        self.high = np.asarray(ACTION_HIGH if action_high is None else action_high, np.float32)
        self.rng = np.random.default_rng(seed)
        self.max_delta, self.chunk = max_delta, chunk

    def reset(self, task: dict[str, Any], instruction: str, scene: dict[str, Any] | None = None) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> PolicyOutput:
        q = np.asarray(obs["proprio"], np.float32)[: len(self.low)]
        out, cur = [], q
        for _ in range(self.chunk):
            cur = np.clip(cur + self.rng.uniform(-self.max_delta, self.max_delta, cur.shape), self.low, self.high)
            out.append(cur)
        return PolicyOutput(actions=np.stack(out).astype(np.float32))


class ScriptedExpertPolicy(Policy):
    """The IK scripted expert of `envs.expert` (or `envs.play` when `play=True`), as a Policy.

    It acts from the observation and the backend's `scene_description()` (given as `scene_fn`), so it
    runs unchanged on the `sim` and `neo` backends."""

    name = "scripted_expert"

    def __init__(self, cfg: Any, scene_fn: Callable[[], dict] | None = None, seed: int = 0,
                 play: bool = False, **_: Any):
        from envs import expert as expert_mod

        self.scene_fn = scene_fn
        noise = 0.0 if play else float(cfg.policy.expert_noise)
        if play:
            from envs.play import PlayPolicy

            self.impl = PlayPolicy(seed=seed)
            self.name = "play"
        else:
            self.impl = expert_mod.ScriptedExpert(noise=noise, seed=seed)

    def reset(self, task: dict[str, Any], instruction: str, scene: dict[str, Any] | None = None) -> None:
        from envs.tasks import TaskInstance

        self.impl.reset(TaskInstance.from_dict(task) if isinstance(task, dict) else task)

    def act(self, obs: dict[str, np.ndarray]) -> PolicyOutput:
        if self.scene_fn is None:
            raise PolicyError("scripted_expert needs the backend's scene_description (scene_fn)")
        action = self.impl.act(obs, self.scene_fn())
        return PolicyOutput(actions=np.asarray(action, np.float32)[None])


class PlayPolicyAdapter(ScriptedExpertPolicy):
    """Unfiltered play motion near objects (for IDM data)."""

    name = "play"

    def __init__(self, cfg: Any, **kw: Any):
        super().__init__(cfg, play=True, **kw)
