"""The three fixed evaluation splits: versioned lists of (seed, instruction, family), 500 items each.

The JSON files under envs/splits/ are the source of truth; `generate_split` is the deterministic
function that wrote them (`python -m envs.splits` rewrites them; a test checks they still agree).
Seeds of different splits never overlap, and none overlaps the training seeds below 1_000_000.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from envs.errors import EnvError
from envs.tasks import SPLIT_FAMILIES, SPLIT_NAMES, TaskInstance, sample_task

SPLIT_DIR = Path(__file__).parent / "splits"
SPLIT_VERSION = 1
SPLIT_SIZE = 500
_SEED_BASE = {"in_distribution": 1_000_000, "new_tasks": 2_000_000, "ood_objects": 3_000_000}


@dataclass(frozen=True)
class SplitItem:
    """One evaluation episode: its seed, instruction and family, in the split `split`."""

    seed: int
    instruction: str
    family: str
    split: str

    def task(self) -> TaskInstance:
        """The TaskInstance; raises EnvError if the task code no longer reproduces the stored item."""
        t = sample_task(self.family, self.seed, self.split)
        if t.instruction != self.instruction:
            raise EnvError(f"split {self.split!r} item seed={self.seed} expected {self.instruction!r} but the task "
                           f"code now gives {t.instruction!r}: bump SPLIT_VERSION and regenerate the splits")
        return t

    def to_dict(self) -> dict:
        return {"seed": self.seed, "instruction": self.instruction, "family": self.family}


def generate_split(name: str, size: int = SPLIT_SIZE) -> list[SplitItem]:
    """Deterministically build a split: families balanced in turn, seeds from the split's base."""
    if name not in SPLIT_NAMES:
        raise EnvError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
    fams = SPLIT_FAMILIES[name]
    order = np.random.default_rng(SPLIT_VERSION).permutation(size) % len(fams)  # balanced, shuffled
    items = []
    for i in range(size):
        seed = _SEED_BASE[name] + i
        t = sample_task(fams[int(order[i])], seed, name)
        items.append(SplitItem(seed, t.instruction, t.family, name))
    return items


def split_path(name: str) -> Path:
    return SPLIT_DIR / f"{name}_v{SPLIT_VERSION}.json"


def write_splits() -> list[Path]:
    """Regenerate every split file (run by hand when the task code changes, with a version bump)."""
    SPLIT_DIR.mkdir(exist_ok=True)
    paths = []
    for name in SPLIT_NAMES:
        head = json.dumps({"name": name, "version": SPLIT_VERSION, "size": SPLIT_SIZE})[:-1]
        rows = ",\n".join(json.dumps(it.to_dict()) for it in generate_split(name))  # one item per line
        p = split_path(name)
        p.write_text(f'{head}, "items": [\n{rows}\n]}}\n')
        paths.append(p)
    return paths


@cache
def _load(name: str) -> tuple[SplitItem, ...]:
    if name not in SPLIT_NAMES:
        raise EnvError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
    p = split_path(name)
    if not p.exists():
        raise EnvError(f"split file {p} is missing; run `python -m envs.splits` to generate it")
    doc = json.loads(p.read_text())
    if doc.get("version") != SPLIT_VERSION:
        raise EnvError(f"{p} has version {doc.get('version')}, the code expects {SPLIT_VERSION}")
    return tuple(SplitItem(int(d["seed"]), d["instruction"], d["family"], name) for d in doc["items"])


def load_split(name: str) -> list[SplitItem]:
    """The 500 items of `name` (in_distribution | new_tasks | ood_objects)."""
    return list(_load(name))


def ci_subset(name: str, n: int) -> list[SplitItem]:
    """A small deterministic subset: the first items of each family in turn (families balanced)."""
    items = _load(name)
    by_fam: dict[str, list[SplitItem]] = {}
    for it in items:
        by_fam.setdefault(it.family, []).append(it)
    out: list[SplitItem] = []
    k = 0
    while len(out) < min(n, len(items)):
        for fam in SPLIT_FAMILIES[name]:
            if k < len(by_fam.get(fam, [])) and len(out) < n:
                out.append(by_fam[fam][k])
        k += 1
    return out


if __name__ == "__main__":
    for path in write_splits():
        print(path)
