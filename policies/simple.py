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
                 seed: int = 0, max_delta: float = 0.08, chunk: int = 1, **_: Any):
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
    """The IK scripted expert of `envs.expert` (or the play motions of `envs.play`), as a Policy.

    The expert reads the simulator's state (it stands in for a teleoperator). With the `sim` backend it
    uses the backend's env directly (`env=`); with any other backend give `state_fn` (the backend's
    `get_state`): a local shadow env is synced to the robot's reported state before every action, so
    the same policy runs unchanged on `neo` through the bridge."""

    name = "scripted_expert"

    def __init__(self, cfg: Any, env: Any = None, state_fn: Callable[[], dict] | None = None, seed: int = 0,
                 play: bool = False, perturbed: bool = False, recovery: bool = False, **_: Any):
        if env is not None:
            state_fn = None  # the expert reads the sim it drives: nothing to sync
        else:
            if state_fn is None:
                raise PolicyError(f"{'play' if play else 'scripted_expert'} needs the sim env or the backend's get_state")
            from envs.tabletop import HumanoidTabletopEnv

            env = HumanoidTabletopEnv(cfg.env)
            env.reset(seed=0)
        self.env, self.state_fn = env, state_fn
        if play:
            from envs.play import PlayPolicy

            self.impl = PlayPolicy(env, seed=seed)
        elif recovery:
            from envs.expert import RecoveryExpert

            self.impl = RecoveryExpert(env, noise=float(cfg.policy.expert_noise), seed=seed)
        elif perturbed:
            from envs.expert import PerturbedExpert

            self.impl = PerturbedExpert(env, noise=float(cfg.policy.expert_noise), seed=seed)
        else:
            from envs.expert import ScriptedExpert

            self.impl = ScriptedExpert(env, noise=float(cfg.policy.expert_noise), seed=seed)

    def _sync(self) -> None:
        if self.state_fn is not None:
            self.env.set_state(self.state_fn())

    def reset(self, task: dict[str, Any], instruction: str, scene: dict[str, Any] | None = None) -> None:
        self._sync()
        self.impl.reset(task)

    def act(self, obs: dict[str, np.ndarray]) -> PolicyOutput:
        self._sync()
        return PolicyOutput(actions=np.asarray(self.impl.act(obs), np.float32)[None])


class PlayPolicyAdapter(ScriptedExpertPolicy):
    """Unfiltered play motion near objects (data for the IDM and the world model's first stage)."""

    name = "play"

    def __init__(self, cfg: Any, **kw: Any):
        super().__init__(cfg, play=True, **kw)


class PerturbedExpertPolicy(ScriptedExpertPolicy):
    """The expert pushed off its path and recovering (`envs.expert.PerturbedExpert`, DART-style): states the
    clean expert never visits, for the IDM. Stored like play (source "play"): data, not demonstrations."""

    name = "perturbed_expert"

    def __init__(self, cfg: Any, **kw: Any):
        super().__init__(cfg, perturbed=True, **kw)


class RecoveryExpertPolicy(ScriptedExpertPolicy):
    """A detour towards a wrong grasp pose near the object, then the expert taking over and finishing the task
    (`envs.expert.RecoveryExpert`, DAgger-style): the corrections the planner's own mistakes call for. Stored
    like play (source "play"), with `takeover_step` in its logs; the world model trains on what follows the
    takeover (the `recovery` mixture component), the IDM on all of it."""

    name = "recovery_expert"

    def __init__(self, cfg: Any, **kw: Any):
        super().__init__(cfg, recovery=True, **kw)

    def logs(self) -> dict[str, Any]:
        goal = self.impl.detour_goal
        return {"takeover_step": int(self.impl.takeover_step),
                "detour_goal": None if goal is None else [round(float(v), 4) for v in goal]}
