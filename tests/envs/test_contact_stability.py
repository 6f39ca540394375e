"""Contact stability: a gripper closing on the edge of a cube must not launch it.

Regression for a replay seen in session 5: an IDM's extraction of a held-out place episode closed the right
gripper with one finger on the edge of the cube, and the cube left the table at ~35 m/s (the finger pads'
contacts were too hard: solimp 0.95/0.99). The actions are a 48x16 float array in tests/envs/data (no
pickle); the initial state is rebuilt from the split item and the expert, both deterministic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.expert import ScriptedExpert
from envs.play import collect_episode
from envs.splits import load_split
from envs.tabletop import HumanoidTabletopEnv

ACTIONS = Path(__file__).parent / "data" / "finger_on_cube_edge_actions.npy"


def test_closing_on_a_cube_edge_does_not_launch_it():
    env = HumanoidTabletopEnv()
    item = [i for i in load_split("in_distribution") if i.family == "place"][4]
    ep = collect_episode(env, ScriptedExpert(env, seed=item.seed), item.task(), item.seed, stop_on_success=False)
    actions = np.load(ACTIONS)
    assert actions.shape == (48, 16) and np.isfinite(actions).all()
    env.reset(options={"state": ep.initial_state})
    names = [o["name"] for o in env.scene_description()["objects"]]
    start = {n: np.array(env.snapshot()["objects"][n]["pos"], copy=True) for n in names}  # a copy: pos is a live view
    moved = 0.0
    for a in actions[:20]:  # the gripper closes on the edge at step 12
        env.step(a)
        snap = env.snapshot()["objects"]
        moved = max(moved, *(float(np.linalg.norm(np.asarray(snap[n]["pos"]) - start[n])) for n in names))
    assert moved < 0.5, f"an object was thrown {moved:.2f} m"  # a shove, not a launch (it was ~90 m)
    env.close()
