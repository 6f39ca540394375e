"""Partial progress of an episode on the sim: how close a hand came to the task's object, and whether it
held or lifted it.

Success is all-or-nothing; while a policy succeeds on none of its episodes, these say whether it is
getting anywhere: a planner whose hand never comes within reach is a different failure from one that
reaches and misses the grasp. `EpisodeProgress.update(env)` is called after every executed chunk (the
closest approach is measured at those instants, so it is an upper bound on the true closest approach).

The "object" is what the task's first contact is with: the object to pick, place, push or hand over,
the drawer's handle, or the tissue. Distances are from each hand's grasp site (between the fingers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

REACHED_M = 0.04  # the expert grasps with its grasp site 2.1-3.3 cm from the object's origin (6 in_distribution items)
SIDES = ("left", "right")


def target_position(env: Any, task: Any) -> np.ndarray:
    """World position (3,) of what the task's hand must reach first."""
    if task.family == "drawer":
        return env.data.geom_xpos[env.model.geom("drawer_handle").id].copy()
    if task.family == "tissue":
        return env.data.geom_xpos[env.model.geom("tissue").id].copy()
    return env.object_pos(task.objects["object"])


def hand_offsets(env: Any, task: Any) -> dict[str, np.ndarray]:
    """Each hand's grasp site minus the task's target (3,), in the world frame (m)."""
    target = target_position(env, task)
    return {side: env.data.site_xpos[env.model.site(f"{side}_grasp").id] - target for side in SIDES}


def hand_distances(env: Any, task: Any) -> dict[str, float]:
    """Distance (m) from each hand's grasp site to the task's target."""
    return {side: float(np.linalg.norm(off)) for side, off in hand_offsets(env, task).items()}


@dataclass
class EpisodeProgress:
    """Closest approach, held and lifted, over one episode's measured instants."""

    task: Any
    held: bool = False  # the task's object was pinched by a hand at some instant
    lifted: bool = False  # ... and above its rest height by `envs.tasks.LIFT_HEIGHT`
    trace: list[float] = field(default_factory=list)  # the nearer hand's distance (m) per instant
    closest_offset: np.ndarray | None = None  # the nearer hand's offset from the target (m) at the closest instant

    @property
    def start_m(self) -> float | None:
        """The nearer hand's distance at the first instant (the reset)."""
        return self.trace[0] if self.trace else None

    @property
    def closest_m(self) -> float | None:
        """The nearest any hand came."""
        return min(self.trace) if self.trace else None

    def update(self, env: Any) -> None:
        from envs.tasks import LIFT_HEIGHT

        offsets = hand_offsets(env, self.task)
        off = min(offsets.values(), key=lambda o: float(np.linalg.norm(o)))
        d = float(np.linalg.norm(off))
        if not np.isfinite(d):
            return
        if not self.trace or d < min(self.trace):
            self.closest_offset = np.asarray(off, float).copy()
        self.trace.append(d)
        if self.task.family in ("drawer", "tissue"):
            return
        snap = env.snapshot()
        name = self.task.objects["object"]
        held = any(name in names for names in snap["held"].values())
        self.held |= held
        obj = snap["objects"][name]
        self.lifted |= held and float(obj["pos"][2] - obj["rest_z"]) > LIFT_HEIGHT

    def as_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(float(v), 4)
        off = self.closest_offset
        return {"start_m": r(self.start_m), "closest_m": r(self.closest_m),
                # where the hand was at its closest: beside the target (xy) or above it (z), in metres
                "closest_xy_m": None if off is None else r(np.linalg.norm(off[:2])),
                "closest_dz_m": None if off is None else r(off[2]),
                "reached": self.closest_m is not None and self.closest_m < REACHED_M,
                "held": self.held, "lifted": self.lifted}


def summarize_progress(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over episodes' `progress` dicts: how many reached, held and lifted, and the closest approach's median,
    its median fraction of the starting distance (1.0: the hand came no nearer) and, where recorded, the median
    offset at that instant beside the target (xy) and above it (z): a hand that stops above its target is a
    different failure from one that comes down beside it."""
    rows = [r for r in rows if r and r.get("closest_m") is not None]
    if not rows:
        return {"n": 0}
    closest = np.array([r["closest_m"] for r in rows], float)
    frac = np.array([r["closest_m"] / r["start_m"] for r in rows if r.get("start_m")], float)
    return {"n": len(rows), "reached": sum(bool(r["reached"]) for r in rows), "held": sum(bool(r["held"]) for r in rows),
            "lifted": sum(bool(r["lifted"]) for r in rows), "median_closest_m": round(float(np.median(closest)), 4),
            "median_closest_of_start": round(float(np.median(frac)), 3) if frac.size else None,
            **{f"median_closest_{k}_m": round(float(np.median(v)), 4)
               for k in ("xy", "dz") if (v := [r[f"closest_{k}_m"] for r in rows
                                              if r.get(f"closest_{k}_m") is not None])}}
