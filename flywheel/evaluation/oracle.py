"""A privileged stand-in for the world model, for research diagnostics only (sim backend): it "imagines"
what the scripted expert would do from the robot's actual state, by simulating it.

Plugged into the imagine-then-act planner in place of the world model, it measures the planner and the
IDM with a perfect imagination: every planning step the IDM extracts actions from a real rendered video
that starts at the robot's current frame. The success rate of that policy is the ceiling imagine-then-act
can reach with these IDM and planner settings, and its gap to the real planner is what the world model
costs (bench/bench_ttc.py --controls oracle_wm).

How a future is made: a shadow env is reset to the episode's task, the expert is replayed there for as
many steps as the robot has taken (so its script is at the same point: a script is a generator and
cannot be copied), then the shadow is set to the robot's real state and the expert continues for the
clip's length, rendering each frame. The expert keeps its own plan (its commanded poses and the grasp
points it read from its own replay), so the video shows the robot being brought back onto the expert's
path from wherever it is. Every candidate is the same video: the expert is deterministic.
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

    def imagine(self, frames: torch.Tensor, caption: str, n: int = 1, steps: int = 0, guidance: float = 1.0,
                seed: int = 0, num_frames: int = 9) -> torch.Tensor:
        """`(n, num_frames, 3, H, W)` in [0, 1]: the expert's next `num_frames - 1` steps from the current
        state, rendered, repeated n times. `frames`, `caption`, `steps`, `guidance`, `seed` are unused."""
        real = self.state_fn()
        task = json_task(real)
        env = self.shadow
        env.reset(options={"task": task})
        expert = self.make_expert(env)
        expert.reset(task, "", None)
        done = int(real["steps"])
        obs = None
        for _ in range(done):  # bring the expert's script to the robot's step
            obs, *_ = env.step(_one(expert.act(obs or {})))
        env.set_state(real)
        video = [env._render().copy()]
        obs = {"rgb": video[0]}
        for _ in range(num_frames - 1):
            obs, *_ = env.step(_one(expert.act(obs)))
            video.append(obs["rgb"].copy())
        self.replayed_steps = done
        v = torch.from_numpy(np.stack(video)).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)
        return v[None].expand(n, -1, -1, -1, -1).clone()

    def close(self) -> None:
        self.shadow.close()


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
