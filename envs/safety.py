"""The safety filter between every policy and every robot (pure numpy).

Every action chunk a backend executes passes `SafetyFilter.check` first: in the sim backend, in the
NEO client before anything is sent, and again in the NEO bridge before the robot moves.

Checks, in order, on a chunk of joint-position targets `(H, D)`:
1. shape and dtype (must be a non-empty `(H, D)` numeric array) - always rejected;
2. NaN / inf - always rejected;
3. joint limits `[action_low, action_high]` - rejected, or clamped in `mode="clamp"`;
4. joint velocity: `|target[t] - target[t-1]| / control_dt <= max_joint_velocity` on the joints of
   `velocity_mask` (the arms; gripper units are not radians). `target[-1]` is the previous accepted
   target, or after `reset(current)` the current joint positions - rejected, or clamped (the step is
   shortened to the limit) in `mode="clamp"`;
5. workspace (optional): `workspace(targets (H, D)) -> bool (H,)` says which targets keep the hands
   inside the workspace; a target outside it is always rejected (clamping would need IK).

Every decision is logged (`envs.safety` logger: DEBUG when passed, WARNING when clamped or rejected)
and counted in `SafetyFilter.counts`.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from envs.errors import SafetyViolation

log = logging.getLogger(__name__)

_EPS = 1e-6  # float32 round-off allowed at the limits

WorkspaceCheck = Callable[[np.ndarray], np.ndarray]  # (H, D) targets -> (H,) bool inside


class SafetyFilter:
    """Reject (or clamp) unsafe joint-position targets before they reach a robot.

    `action_low`/`action_high`: (D,) joint limits in the actuators' units. `max_joint_velocity`
    (rad/s, None disables the check) over `control_dt` seconds per target. `mode`: "reject" or "clamp"
    (shape, NaN/inf and workspace violations are rejected in both modes).
    """

    def __init__(
        self,
        action_low: np.ndarray,
        action_high: np.ndarray,
        *,
        max_joint_velocity: float | None,
        control_dt: float,
        mode: str = "reject",
        velocity_mask: np.ndarray | None = None,
        workspace: WorkspaceCheck | None = None,
        joint_names: Sequence[str] | None = None,
        name: str = "safety",
    ) -> None:
        self.low = np.asarray(action_low, dtype=np.float32).reshape(-1)  # (D,)
        self.high = np.asarray(action_high, dtype=np.float32).reshape(-1)  # (D,)
        if (self.low.shape != self.high.shape or not np.all(np.isfinite(self.low))
                or not np.all(np.isfinite(self.high)) or np.any(self.low > self.high)):
            raise ValueError("safety: action_low and action_high must be finite (D,) with low <= high")
        if mode not in ("reject", "clamp"):
            raise ValueError(f"safety: mode must be 'reject' or 'clamp', got {mode!r}")
        if not (np.isfinite(control_dt) and control_dt > 0):
            raise ValueError(f"safety: control_dt must be a finite number > 0, got {control_dt}")
        if max_joint_velocity is not None and not (np.isfinite(max_joint_velocity) and max_joint_velocity > 0):
            raise ValueError(f"safety: max_joint_velocity must be a finite number > 0 or None, "
                             f"got {max_joint_velocity}")
        self.dim = int(self.low.shape[0])
        self.mode = mode
        self.control_dt = float(control_dt)
        self.max_joint_velocity = None if max_joint_velocity is None else float(max_joint_velocity)
        mask = np.ones(self.dim, bool) if velocity_mask is None else np.asarray(velocity_mask, bool)
        if mask.shape != (self.dim,):
            raise ValueError(f"safety: velocity_mask must be ({self.dim},), got {mask.shape}")
        self.velocity_mask = mask
        self.workspace = workspace
        self.joint_names = list(joint_names) if joint_names else [f"joint{i}" for i in range(self.dim)]
        self.name = name
        self.counts: Counter[str] = Counter()
        self._previous: np.ndarray | None = None  # (D,) last accepted target or current position
        self._bad_reference: str | None = None  # why the pose given to reset() was refused

    @classmethod
    def from_config(cls, cfg, action_low: np.ndarray, action_high: np.ndarray, control_dt: float,
                    **kwargs) -> SafetyFilter:
        """Build from an `envs.config.SafetyConfig` (mode, max_joint_velocity)."""
        return cls(action_low, action_high, max_joint_velocity=cfg.max_joint_velocity,
                   control_dt=control_dt, mode=cfg.mode, **kwargs)

    @property
    def max_step(self) -> float:
        """The largest allowed change of one target per control period (rad)."""
        return np.inf if self.max_joint_velocity is None else self.max_joint_velocity * self.control_dt

    @property
    def reference(self) -> np.ndarray | None:
        """(D,) what the next chunk's first target is rate-limited from: the last accepted target, or the pose
        given at reset; None when there is none (no velocity check on the first target, or a refused pose)."""
        return None if self._previous is None else self._previous.copy()

    def reset(self, current: np.ndarray | None = None) -> None:
        """Start a new command stream; the next first target is checked against `current` (D,) if given.

        A `current` that is not a finite (D,) pose (a robot reporting a broken encoder) is refused: every
        chunk is then rejected until a reset with a valid pose, since no velocity check could be made."""
        self._previous = None
        self._bad_reference = None
        if current is not None:
            cur = np.asarray(current, dtype=np.float32).reshape(-1)
            if cur.shape != (self.dim,):
                self._bad_reference = f"the current pose given at reset has shape {cur.shape}, not ({self.dim},)"
            elif not np.all(np.isfinite(cur)):
                joint = self.joint_names[int(np.argmin(np.isfinite(cur)))]
                self._bad_reference = f"the current pose given at reset is non-finite ({joint})"
            else:
                self._previous = cur.copy()
            if self._bad_reference:
                log.warning("%s: %s; every chunk is rejected until a valid reset", self.name, self._bad_reference)

    def check(self, actions: np.ndarray) -> np.ndarray:
        """Return the chunk to execute, float32 (H, D), or raise SafetyViolation. Updates the reference."""
        self.counts["checked"] += 1
        if self._bad_reference:
            self._reject("reference", f"no valid reference pose: {self._bad_reference}")
        a = self._check_shape(actions)
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            self._reject("nonfinite", f"non-finite target at step {bad[0]}, {self.joint_names[bad[1]]}")
        clamped: list[str] = []
        a = self._check_limits(a, clamped)
        a = self._check_velocity(a, clamped)
        if self.workspace is not None:
            inside = np.asarray(self.workspace(a), bool).reshape(-1)
            if not np.all(inside):
                self._reject("workspace", f"target at step {int(np.argmin(inside))} leaves the workspace")
        self._previous = a[-1].copy()
        if clamped:
            self.counts["clamped"] += 1
            for why in clamped:
                self.counts[f"clamped:{why}"] += 1
            log.warning("%s: clamped a chunk of %d targets (%s)", self.name, len(a), ", ".join(clamped))
        else:
            self.counts["passed"] += 1
            log.debug("%s: passed a chunk of %d targets", self.name, len(a))
        return a

    __call__ = check

    # -- the checks -------------------------------------------------------------------------
    def _reject(self, why: str, message: str) -> None:
        self.counts["rejected"] += 1
        self.counts[f"rejected:{why}"] += 1
        log.warning("%s: rejected (%s): %s", self.name, why, message)
        raise SafetyViolation(f"safety filter rejected the command: {message}")

    def _check_shape(self, actions: np.ndarray) -> np.ndarray:
        try:
            a = np.asarray(actions)
        except (ValueError, TypeError):  # ragged lists and the like
            self._reject("shape", "actions are not an array")
        if a.dtype.kind not in "fiu":
            self._reject("shape", f"actions must be numeric, got dtype {a.dtype}")
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != self.dim:
            self._reject("shape", f"actions must be (H, {self.dim}) with H >= 1, got {a.shape}")
        return a.astype(np.float32, copy=True)

    def _check_limits(self, a: np.ndarray, clamped: list[str]) -> np.ndarray:
        out = (a < self.low - _EPS) | (a > self.high + _EPS)  # (H, D)
        if not out.any():
            return a
        if self.mode == "reject":
            t, j = np.argwhere(out)[0]
            self._reject("limits", f"{self.joint_names[j]} target {a[t, j]:.4f} at step {t} is outside "
                         f"[{self.low[j]:.4f}, {self.high[j]:.4f}]")
        clamped.append("limits")
        return np.clip(a, self.low, self.high)

    def _check_velocity(self, a: np.ndarray, clamped: list[str]) -> np.ndarray:
        if self.max_joint_velocity is None:
            return a
        limit, m = self.max_step, self.velocity_mask
        prev = self._previous
        changed = False
        for t in range(len(a)):
            if prev is not None:
                delta = a[t] - prev  # (D,)
                over = m & (np.abs(delta) > limit + _EPS)
                if over.any():
                    if self.mode == "reject":
                        j = int(np.argmax(over))
                        self._reject("velocity", f"{self.joint_names[j]} moves {abs(delta[j]):.4f} rad at step "
                                     f"{t}, more than {limit:.4f} rad per {self.control_dt:.3f} s "
                                     f"({self.max_joint_velocity} rad/s)")
                    a[t] = np.where(m, prev + np.clip(delta, -limit, limit), a[t])
                    a[t] = np.clip(a[t], self.low, self.high)
                    changed = True
            prev = a[t]
        if changed:
            clamped.append("velocity")
        return a
