"""Task families, the object catalogue, instruction templates and success predicates.

Pure Python + NumPy (no MuJoCo): predicates take a *snapshot* of the sim state (a plain dict the env
builds each step, or a test builds by hand), so they are unit-testable on constructed states.

Snapshot layout (all positions in metres, world frame):
    {"table_z": float,
     "objects": {name: {"pos": (3,) array, "rest_z": float}},   # rest_z: height at reset
     "joints": {"drawer": float, "tissue": float},              # slide joint positions (m)
     "held": {"left": [names], "right": [names]}}               # objects pinched by both fingers
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.errors import EnvError

FAMILIES: tuple[str, ...] = ("pick", "place", "push", "drawer", "tissue", "handover")
SPLIT_NAMES: tuple[str, ...] = ("in_distribution", "new_tasks", "ood_objects")
POOLS: tuple[str, ...] = ("train",) + SPLIT_NAMES

# The robot training mix mirrors the seeds' post-training data: pick and place only. The other
# families are absent from it on purpose: they make up the `new_tasks` evaluation split.
TRAINING_MIX: dict[str, float] = {
    "pick": 0.5, "place": 0.5, "push": 0.0, "drawer": 0.0, "tissue": 0.0, "handover": 0.0,
}
SPLIT_FAMILIES: dict[str, tuple[str, ...]] = {
    "train": ("pick", "place"),
    "in_distribution": ("pick", "place"),
    "new_tasks": ("push", "drawer", "tissue", "handover"),
    "ood_objects": ("pick", "place"),
}

# ---------------------------------------------------------------- the object catalogue
TRAIN_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "green": (0.15, 0.70, 0.20),
    "blue": (0.12, 0.25, 0.85), "yellow": (0.92, 0.82, 0.10),
}
HELDOUT_COLOURS: dict[str, tuple[float, float, float]] = {
    "orange": (0.95, 0.50, 0.05), "purple": (0.55, 0.15, 0.70),
    "pink": (0.95, 0.50, 0.70), "cyan": (0.10, 0.80, 0.85),
}
COLOURS = {**TRAIN_COLOURS, **HELDOUT_COLOURS}
SMALL_SHAPES: tuple[str, ...] = ("cube", "cylinder", "sphere")  # colourable graspable shapes
FIXED_OBJECTS: dict[str, str] = {  # name -> shape, one instance each
    "mug": "mug", "bowl": "bowl", "plate": "plate", "lunchbox": "lunchbox", "tissue box": "tissue_box",
}
CONTAINERS: tuple[str, ...] = ("bowl", "plate")


def pickables(pool: str) -> list[str]:
    """Graspable object names of a pool: training objects, or held-out shapes/colours for ood."""
    if pool == "ood_objects":
        held = [f"{c} cube" for c in HELDOUT_COLOURS]
        return held + [f"{c} {s}" for s in ("cylinder", "sphere") for c in COLOURS]
    return [f"{c} cube" for c in TRAIN_COLOURS] + ["mug"]


def parse_object(name: str) -> tuple[str | None, str]:
    """'red cube' -> ('red', 'cube'); 'bowl' -> (None, 'bowl'). Raises EnvError on unknown names."""
    if name in FIXED_OBJECTS:
        return None, FIXED_OBJECTS[name]
    parts = name.split()
    if len(parts) == 2 and parts[0] in COLOURS and parts[1] in SMALL_SHAPES:
        return parts[0], parts[1]
    raise EnvError(f"unknown object {name!r}: use '<colour> <cube|cylinder|sphere>' or one of {sorted(FIXED_OBJECTS)}")


# ---------------------------------------------------------------- task instances
@dataclass
class TaskInstance:
    """One task: its family, instruction, objects by role, the seed of its scene and its split."""

    family: str
    instruction: str
    objects: dict[str, str]
    seed: int
    split: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # e.g. {"verb": "open"}, {"from": "left", "to": "right"}

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise EnvError(f"unknown task family {self.family!r}; choose one of {FAMILIES}")
        for name in self.objects.values():
            parse_object(name)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "instruction": self.instruction, "objects": dict(self.objects),
                "seed": int(self.seed), "split": self.split, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskInstance:
        try:
            return cls(family=d["family"], instruction=d["instruction"], objects=dict(d["objects"]),
                       seed=int(d["seed"]), split=d.get("split"), params=dict(d.get("params") or {}))
        except KeyError as e:
            raise EnvError(f"task dict is missing the key {e.args[0]!r}") from None

    @property
    def pool(self) -> str:
        return self.split or "train"


TEMPLATES: dict[str, list[str]] = {
    "pick": ["pick up the {object}", "lift the {object}", "grab the {object} and lift it"],
    "place_bowl": ["put the {object} in the bowl", "place the {object} into the bowl"],
    "place_plate": ["put the {object} on the plate", "place the {object} onto the plate"],
    "push": ["push the {object} to the {target}", "slide the {object} next to the {target}"],
    "drawer_open": ["open the lunchbox drawer", "pull the lunchbox drawer open"],
    "drawer_close": ["close the lunchbox drawer", "push the lunchbox drawer shut"],
    "tissue": ["pull a tissue from the tissue box", "take a tissue out of the tissue box"],
    "handover": ["hand the {object} from the {from} hand to the {to} hand", "pass the {object} to the {to} hand"],
}


def sample_task(family: str | None, seed: int, split: str = "train") -> TaskInstance:
    """Deterministically draw a task of `family` (or one from the split's mix) for `seed`."""
    if split not in POOLS:
        raise EnvError(f"unknown split {split!r}; choose one of {POOLS}")
    rng = np.random.default_rng([int(seed), 0x7A5C])
    if family is None:
        fams = SPLIT_FAMILIES[split]
        w = np.array([TRAINING_MIX[f] if split == "train" else 1.0 for f in fams])
        family = fams[int(rng.choice(len(fams), p=w / w.sum()))]
    if family not in FAMILIES:
        raise EnvError(f"unknown task family {family!r}; choose one of {FAMILIES}")
    pool = split
    cubes = [f"{c} cube" for c in TRAIN_COLOURS]
    params: dict[str, str] = {}
    if family == "pick":
        objects = {"object": str(rng.choice(pickables(pool)))}
        key = "pick"
    elif family == "place":
        objects = {"object": str(rng.choice(pickables(pool))), "target": str(rng.choice(CONTAINERS))}
        key = f"place_{objects['target']}"
    elif family == "push":
        obj, tgt = rng.choice(len(cubes), size=2, replace=False)
        objects = {"object": cubes[obj], "target": cubes[tgt]}
        key = "push"
    elif family == "drawer":
        params = {"verb": str(rng.choice(["open", "close"]))}
        objects = {"object": "lunchbox"}
        key = f"drawer_{params['verb']}"
    elif family == "tissue":
        objects = {"object": "tissue box"}
        key = "tissue"
    else:  # handover
        src = str(rng.choice(["left", "right"]))
        params = {"from": src, "to": "right" if src == "left" else "left"}
        objects = {"object": str(rng.choice(cubes))}
        key = "handover"
    template = TEMPLATES[key][int(rng.integers(len(TEMPLATES[key])))]
    instruction = template.format(**objects, **params)
    return TaskInstance(family, instruction, objects, int(seed), None if split == "train" else split, params)


# ---------------------------------------------------------------- success predicates
LIFT_HEIGHT = 0.05  # m above the rest height counts as lifted
PLACE_RADIUS = {"bowl": 0.06, "plate": 0.07}
PUSH_RADIUS = 0.09
DRAWER_OPEN, DRAWER_CLOSED = 0.07, 0.015
TISSUE_PULLED = 0.07


def _held_by(snap: dict, name: str) -> set[str]:
    return {side for side, names in snap["held"].items() if name in names}


def success(task: TaskInstance, snap: dict) -> bool:
    """Whether the snapshot satisfies the task (see the module docstring for the snapshot)."""
    objs = snap["objects"]
    name = task.objects["object"]
    if task.family in ("drawer", "tissue"):
        q = snap["joints"][task.family]
        if task.family == "tissue":
            return q > TISSUE_PULLED
        return q > DRAWER_OPEN if task.params.get("verb", "open") == "open" else q < DRAWER_CLOSED
    o = objs[name]
    lifted = o["pos"][2] - o["rest_z"] > LIFT_HEIGHT
    held = _held_by(snap, name)
    if task.family == "pick":
        return bool(lifted and held)
    if task.family == "handover":
        return bool(lifted and held == {task.params.get("to", "right")})
    t = objs[task.objects["target"]]
    dxy = float(np.linalg.norm(np.asarray(o["pos"][:2]) - np.asarray(t["pos"][:2])))
    if task.family == "place":
        dz = o["pos"][2] - t["pos"][2]
        return bool(dxy < PLACE_RADIUS[task.objects["target"]] and 0.0 < dz < 0.08 and not held)
    # push: next to the target, still on the table, not carried
    return bool(dxy < PUSH_RADIUS and o["pos"][2] - o["rest_z"] < 0.02 and not held)
