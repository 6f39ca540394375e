"""Task instances, success predicates on constructed states, and the evaluation splits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from envs.errors import EnvError
from envs.splits import SPLIT_SIZE, ci_subset, generate_split, load_split
from envs.tasks import (
    FAMILIES,
    SPLIT_FAMILIES,
    TRAINING_MIX,
    TaskInstance,
    parse_object,
    pickables,
    sample_task,
    success,
)


def snap(objects: dict, held: dict | None = None, drawer: float = 0.0, tissue: float = 0.0) -> dict:
    objs = {n: {"pos": np.asarray(p, dtype=float), "rest_z": rz} for n, (p, rz) in objects.items()}
    return {"table_z": 0.72, "objects": objs, "held": {"left": [], "right": [], **(held or {})},
            "joints": {"drawer": drawer, "tissue": tissue}}


def task(family: str, objects: dict, **params) -> TaskInstance:
    return TaskInstance(family, "x", objects, seed=0, params=params)


def test_pick_predicate():
    t = task("pick", {"object": "red cube"})
    assert success(t, snap({"red cube": ((0.4, 0, 0.82), 0.742)}, {"left": ["red cube"]}))
    assert not success(t, snap({"red cube": ((0.4, 0, 0.75), 0.742)}, {"left": ["red cube"]}))  # not lifted
    assert not success(t, snap({"red cube": ((0.4, 0, 0.82), 0.742)}))  # lifted but not held


def test_place_predicate_bowl_and_plate():
    t = task("place", {"object": "red cube", "target": "bowl"})
    inside = {"red cube": ((0.45, 0.1, 0.75), 0.742), "bowl": ((0.46, 0.11, 0.72), 0.72)}
    assert success(t, snap(inside))
    assert not success(t, snap(inside, {"right": ["red cube"]}))  # still carried
    assert not success(t, snap({**inside, "red cube": ((0.30, 0.1, 0.742), 0.742)}))  # beside the bowl
    assert not success(t, snap({**inside, "red cube": ((0.46, 0.11, 0.86), 0.742)}))  # hovering above
    tp = task("place", {"object": "mug", "target": "plate"})
    assert success(tp, snap({"mug": ((0.4, 0.0, 0.78), 0.765), "plate": ((0.41, 0.0, 0.727), 0.727)}))


def test_push_predicate():
    t = task("push", {"object": "red cube", "target": "blue cube"})
    assert success(t, snap({"red cube": ((0.45, 0.0, 0.742), 0.742), "blue cube": ((0.5, 0.0, 0.742), 0.742)}))
    assert not success(t, snap({"red cube": ((0.30, 0.0, 0.742), 0.742), "blue cube": ((0.5, 0.0, 0.742), 0.742)}))
    assert not success(t, snap({"red cube": ((0.45, 0.0, 0.80), 0.742), "blue cube": ((0.5, 0.0, 0.742), 0.742)}))


def test_drawer_tissue_handover_predicates():
    lb = {"lunchbox": ((0.5, 0, 0.72), 0.72)}
    assert success(task("drawer", {"object": "lunchbox"}, verb="open"), snap(lb, drawer=0.09))
    assert not success(task("drawer", {"object": "lunchbox"}, verb="open"), snap(lb, drawer=0.02))
    assert success(task("drawer", {"object": "lunchbox"}, verb="close"), snap(lb, drawer=0.005))
    assert not success(task("drawer", {"object": "lunchbox"}, verb="close"), snap(lb, drawer=0.09))
    tb = {"tissue box": ((0.45, 0, 0.72), 0.72)}
    assert success(task("tissue", {"object": "tissue box"}), snap(tb, tissue=0.1))
    assert not success(task("tissue", {"object": "tissue box"}), snap(tb, tissue=0.01))
    t = task("handover", {"object": "red cube"}, **{"from": "left", "to": "right"})
    up = {"red cube": ((0.4, 0, 0.9), 0.742)}
    assert success(t, snap(up, {"right": ["red cube"]}))
    assert not success(t, snap(up, {"right": ["red cube"], "left": ["red cube"]}))  # not let go yet
    assert not success(t, snap(up, {"left": ["red cube"]}))


def test_task_instance_roundtrip_and_errors():
    t = sample_task("handover", 5, "new_tasks")
    d = json.loads(json.dumps(t.to_dict()))
    assert TaskInstance.from_dict(d) == t
    with pytest.raises(EnvError, match="family"):
        TaskInstance("juggle", "x", {}, 0)
    with pytest.raises(EnvError, match="unknown object"):
        parse_object("golden teapot")
    with pytest.raises(EnvError, match="missing"):
        TaskInstance.from_dict({"family": "pick"})


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_task_deterministic(family):
    split = "new_tasks" if family in SPLIT_FAMILIES["new_tasks"] else "in_distribution"
    a, b = sample_task(family, 11, split), sample_task(family, 11, split)
    assert a == b and a.family == family and a.instruction
    assert "{" not in a.instruction


def test_training_mix_is_pick_and_place():
    assert sum(TRAINING_MIX[f] for f in ("pick", "place")) == pytest.approx(1.0)
    fams = {sample_task(None, s).family for s in range(40)}
    assert fams == {"pick", "place"}


@pytest.mark.parametrize("name", ["in_distribution", "new_tasks", "ood_objects"])
def test_split_files(name):
    items = load_split(name)
    assert len(items) == SPLIT_SIZE
    assert {it.family for it in items} == set(SPLIT_FAMILIES[name])
    assert len({it.seed for it in items}) == SPLIT_SIZE
    fresh = generate_split(name)
    assert [(i.seed, i.instruction, i.family) for i in fresh] == [(i.seed, i.instruction, i.family) for i in items]
    assert items[3].task().instruction == items[3].instruction
    sub = ci_subset(name, 8)
    assert sub == ci_subset(name, 8) and len(sub) == 8
    assert {it.family for it in sub} == set(SPLIT_FAMILIES[name])


def test_splits_disjoint_and_ood_objects_held_out():
    seeds = [{it.seed for it in load_split(n)} for n in ("in_distribution", "new_tasks", "ood_objects")]
    assert not (seeds[0] & seeds[1]) and not (seeds[0] & seeds[2]) and not (seeds[1] & seeds[2])
    train = set(pickables("train"))
    for it in load_split("ood_objects")[:100]:
        assert it.task().objects["object"] not in train
    with pytest.raises(EnvError):
        load_split("nope")
