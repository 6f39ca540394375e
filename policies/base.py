"""The `Policy` interface every policy implements, its registry, and `make_policy`.

A policy is reset with the task and its instruction, then asked for an action chunk from each
observation. It never talks to a robot: the episode runner sends the chunk through the backend
(and its safety filter). Heavy policies are imported lazily, so listing names is instant.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies.errors import PolicyError


@dataclass
class PolicyOutput:
    """What a policy returns for one observation.

    `actions` is an (H, A) chunk of joint-position targets to execute in order; an empty chunk with
    `hold=True` means "no acceptable action: hold still", with `failure_reason` saying why.
    `info` holds what the policy wants logged for this step (e.g. the scored candidates).
    """

    actions: np.ndarray
    hold: bool = False
    failure_reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Policy(ABC):
    """Base class: `reset(task, instruction, scene)` then `act(obs)` until the episode ends."""

    name: str = "policy"

    @abstractmethod
    def reset(self, task: dict[str, Any], instruction: str, scene: dict[str, Any] | None = None) -> None:
        """Start a new episode for `task` (a TaskInstance dict) with its short `instruction`."""

    @abstractmethod
    def act(self, obs: dict[str, np.ndarray]) -> PolicyOutput:
        """Return the next action chunk for observation `obs` (rgb uint8 (H,W,3), proprio (32,))."""

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """An observation the policy did not act on (the steps inside an executed chunk, in order); the
        runner calls it before `act` on the chunk's last observation. Default: ignored."""

    def logs(self) -> dict[str, Any]:
        """Per-episode summary this policy wants recorded with the episode (JSON-able)."""
        return {}

    def close(self) -> None:
        """Release resources (models, renderers)."""


# name -> "module:Class"; imported only when asked for
POLICY_REGISTRY: dict[str, str] = {
    "random": "policies.simple:RandomPolicy",
    "scripted_expert": "policies.simple:ScriptedExpertPolicy",
    "play": "policies.simple:PlayPolicyAdapter",
    "perturbed_expert": "policies.simple:PerturbedExpertPolicy",
    "recovery_expert": "policies.simple:RecoveryExpertPolicy",
    "imagine_then_act": "policies.imagine_then_act:ImagineThenActPolicy",
}


def policy_names() -> list[str]:
    return sorted(POLICY_REGISTRY)


def make_policy(name: str, cfg: Any, **kwargs: Any) -> Policy:
    """Build the registered policy `name` from the product config `cfg` (flywheel.config.Config)."""
    if name not in POLICY_REGISTRY:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(policy_names())}")
    module_name, cls_name = POLICY_REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(cfg, **kwargs)
