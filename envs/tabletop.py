"""`HumanoidTabletopEnv`: the NEO-like humanoid at a table, as a gymnasium env.

Observation: dict(rgb=uint8 (H, W, 3) egocentric camera, proprio=float32 (32,)).
Action ("joint", default): float32 (16,) joint-position targets in the actuators' ctrlrange.
Action ("ee_delta"): float32 (14,) in [-1, 1]: [left dxyz, left drot, right dxyz, right drot, left grip,
right grip], scaled to EE_POS_STEP m / EE_ROT_STEP rad per step and solved to joint targets by IK.
One control step = n_substeps physics steps (1 / (control_hz * physics_dt)).

The scene of a task is seeded by `task.seed` (a task with the same seed gives the same scene); a plain
`reset(seed=s)` draws a training task from `s` and uses `s` for the scene.
"""
from __future__ import annotations

from envs.rendering import configure_gl

configure_gl()  # before mujoco is imported

import json
import math
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.config import EnvConfig
from envs.errors import EnvError
from envs.rendering import EgoRenderer
from envs.robot import (
    ACTION_DIM,
    ACTION_HIGH,
    ACTION_LOW,
    ARM_SLICE,
    GRIPPER_INDEX,
    GRIPPER_OPEN,
    HOME_QPOS,
    JOINT_NAMES,
    PROPRIO_DIM,
)
from envs.scene import SLOTS, TABLE_Z, Layout, build_scene_xml, sample_layout
from envs.tasks import TaskInstance, sample_task, success

EE_POS_STEP = 0.04  # m per control step at |a| = 1
EE_ROT_STEP = 0.2  # rad per control step at |a| = 1
SETTLE_S = 0.1  # physics time run at reset so objects come to rest
_MODEL_FIELDS = ("geom_rgba", "geom_contype", "geom_conaffinity", "geom_matid", "body_gravcomp",
                 "mat_rgba", "light_pos", "light_diffuse")
_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


class HumanoidTabletopEnv(gym.Env):
    """MuJoCo humanoid tabletop env with language tasks (see module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 - gymnasium API

    def __init__(self, cfg: EnvConfig | None = None, render_mode: str | None = "rgb_array") -> None:
        self.cfg = cfg or EnvConfig()
        if render_mode not in (None, "rgb_array"):
            raise EnvError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.cfg.control_hz}
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(self.cfg.image_size))
        self.model.opt.timestep = self.cfg.physics_dt
        self.data = mujoco.MjData(self.model)
        self.n_substeps = max(1, round(1.0 / (self.cfg.control_hz * self.cfg.physics_dt)))
        self._index_model()

        size = self.cfg.image_size
        self.observation_space = gym.spaces.Dict({
            "rgb": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "proprio": gym.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
        })
        if self.cfg.action_space == "joint":
            self.action_space = gym.spaces.Box(ACTION_LOW, ACTION_HIGH, (ACTION_DIM,), np.float32)
        else:
            self.action_space = gym.spaces.Box(-1.0, 1.0, (14,), np.float32)
        self._renderer: EgoRenderer | None = None
        self._iks: dict[str, Any] = {}
        self._task: TaskInstance | None = None
        self._task_dict: dict[str, Any] = {}
        self._layout_json = "{}"
        self._names: dict[int, str] = {}  # slot index -> semantic name, active slots only
        self._rest_z = np.zeros(len(SLOTS))
        self._steps = 0
        self._last_rgb: np.ndarray | None = None

    # ------------------------------------------------------------------ model bookkeeping
    def _index_model(self) -> None:
        m = self.model
        joints = [m.joint(n) for n in JOINT_NAMES]
        self._qadr = np.array([j.qposadr[0] for j in joints])  # (16,)
        self._dadr = np.array([j.dofadr[0] for j in joints])  # (16,)
        self._slot_body = np.array([m.body(s.slot).id for s in SLOTS])
        self._slot_qadr = np.array([m.joint(s.slot).qposadr[0] for s in SLOTS])
        self._slot_dadr = np.array([m.joint(s.slot).dofadr[0] for s in SLOTS])
        root_of = {}
        for b in range(m.nbody):  # map every object body (and its children) to its slot
            a = b
            while a != 0 and a not in set(self._slot_body):
                a = m.body_parentid[a]
            if a != 0:
                root_of[b] = int(np.where(self._slot_body == a)[0][0])
        self._slot_bodies = [[b for b, s in root_of.items() if s == i] for i in range(len(SLOTS))]
        self._geom_slot = np.full(m.ngeom, -1)
        for g in range(m.ngeom):
            self._geom_slot[g] = root_of.get(int(m.geom_bodyid[g]), -1)
        self._slot_geoms = [np.where(self._geom_slot == i)[0] for i in range(len(SLOTS))]
        self._colour_geom = {i: m.geom(f"{s.slot}_c").id for i, s in enumerate(SLOTS)
                             if s.shape in ("cube", "cylinder", "sphere")}
        self._finger_code = np.zeros(m.ngeom, dtype=np.int64)
        for k, name in enumerate(("left_finger_a", "left_finger_b", "right_finger_a", "right_finger_b")):
            self._finger_code[m.geom(name).id] = k + 1
        self._drawer_q = m.joint("drawer").qposadr[0]
        self._tissue_q = m.joint("tissue").qposadr[0]
        self._table_geom = m.geom("table_top").id
        self._floor_mat = m.material("floor").id
        self._nominal = {f: getattr(m, f).copy() for f in _MODEL_FIELDS}
        self._state_size = mujoco.mj_stateSize(m, _STATE_SPEC)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = options or {}
        if options.get("state") is not None:
            self.set_state(options["state"])
            return self._obs(), self._info(self._success())
        task = options.get("task")
        if task is None:
            scene_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
            task = sample_task(None, scene_seed, "train")
        elif isinstance(task, dict):
            task = TaskInstance.from_dict(task)
        elif not isinstance(task, TaskInstance):
            raise EnvError(f"options['task'] must be a TaskInstance or its dict, got {type(task).__name__}")
        self._apply_layout(task, sample_layout(task, task.seed))
        return self._obs(), self._info(False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self._task is None:
            raise EnvError("call reset() before step()")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise EnvError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise EnvError("action contains NaN or inf")
        if self.cfg.action_space == "ee_delta":
            self.data.ctrl[:] = self._ee_delta_to_joint(np.clip(a, -1.0, 1.0))
        else:
            self.data.ctrl[:] = np.clip(a, ACTION_LOW, ACTION_HIGH)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._steps += 1
        ok = self._success()
        truncated = self._steps >= self.cfg.max_steps
        return self._obs(), float(ok), ok, truncated, self._info(ok)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._last_rgb if self._last_rgb is not None else self._render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ properties
    @property
    def task(self) -> TaskInstance | None:
        """The current task (None before the first reset)."""
        return self._task

    @property
    def steps(self) -> int:
        return self._steps

    def slot_index(self, name: str) -> int:
        """Slot index of the active object called `name` ("red cube")."""
        for i, n in self._names.items():
            if n == name:
                return i
        raise EnvError(f"object {name!r} is not in the scene; present: {sorted(self._names.values())}")

    def object_pos(self, name: str) -> np.ndarray:
        """World position (3,) of an object's body origin."""
        return self.data.xpos[self._slot_body[self.slot_index(name)]].copy()

    def object_yaw(self, name: str) -> float:
        w, x, y, z = self.data.xquat[self._slot_body[self.slot_index(name)]]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def joint_qpos(self) -> np.ndarray:
        """qpos of the 16 actuated joints (16,)."""
        return self.data.qpos[self._qadr].copy()

    # ------------------------------------------------------------------ layout
    def _apply_layout(self, task: TaskInstance, layout: Layout) -> None:
        m, d = self.model, self.data
        for f, v in self._nominal.items():
            getattr(m, f)[:] = v
        mujoco.mj_resetData(m, d)
        d.qpos[self._qadr] = HOME_QPOS
        d.ctrl[:] = HOME_QPOS
        d.qpos[m.joint("left_gripper_b").qposadr[0]] = GRIPPER_OPEN
        d.qpos[m.joint("right_gripper_b").qposadr[0]] = GRIPPER_OPEN
        placed = {p.slot: p for p in layout.objects}
        self._names = {}
        for i, s in enumerate(SLOTS):
            qa = self._slot_qadr[i]
            p = placed.get(s.slot)
            if p is None:  # park: off the table, hidden, contact-free, floating still
                d.qpos[qa:qa + 7] = (-2.0, 0.4 * i, 0.5, 1, 0, 0, 0)
                m.geom_contype[self._slot_geoms[i]] = 0
                m.geom_conaffinity[self._slot_geoms[i]] = 0
                m.geom_rgba[self._slot_geoms[i], 3] = 0.0
                m.body_gravcomp[self._slot_bodies[i]] = 1.0
                continue
            self._names[i] = p.name
            d.qpos[qa:qa + 7] = (p.xy[0], p.xy[1], TABLE_Z + s.rest_z + 1e-4, np.cos(p.yaw / 2), 0, 0, np.sin(p.yaw / 2))
            if p.colour is not None:
                m.geom_rgba[self._colour_geom[i]] = (*p.colour, 1.0)
        d.qpos[self._drawer_q] = layout.drawer_q
        m.geom_matid[self._table_geom] = m.material(layout.table_material).id
        m.mat_rgba[m.geom_matid[self._table_geom]] = (*layout.table_rgb, 1.0)
        m.mat_rgba[self._floor_mat] = (*layout.floor_rgb, 1.0)
        m.light_pos[0] = layout.light_pos
        m.light_diffuse[0] = layout.light_diffuse
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=max(1, int(SETTLE_S / m.opt.timestep)))
        d.time = 0.0
        self._rest_z = d.xpos[self._slot_body, 2].copy()
        self._task = task
        self._task_dict = task.to_dict()
        self._layout_json = json.dumps(_layout_to_dict(layout))
        self._steps = 0
        self._last_rgb = None

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, np.ndarray]:
        """Everything needed to reproduce the current scene exactly (plain arrays, np.savez-able)."""
        if self._task is None:
            raise EnvError("call reset() before get_state()")
        phys = np.empty(self._state_size)
        mujoco.mj_getState(self.model, self.data, phys, _STATE_SPEC)
        state = {"physics": phys, "rest_z": self._rest_z.copy(), "steps": np.array(self._steps, dtype=np.int64),
                 "task": np.array(json.dumps(self._task_dict)), "layout": np.array(self._layout_json)}
        for f in _MODEL_FIELDS:
            state[f] = getattr(self.model, f).copy()
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a state from `get_state()` (also accepts an `np.load` archive)."""
        missing = [k for k in ("physics", "rest_z", "steps", "task", "layout", *_MODEL_FIELDS) if k not in state]
        if missing:
            raise EnvError(f"state is missing {missing}; pass a dict from HumanoidTabletopEnv.get_state()")
        phys = np.asarray(state["physics"], dtype=np.float64)
        if phys.shape != (self._state_size,):
            raise EnvError(f"state['physics'] has shape {phys.shape}, expected ({self._state_size},): "
                           "it was recorded with a different model version")
        for f in _MODEL_FIELDS:
            arr = getattr(self.model, f)
            arr[:] = np.asarray(state[f]).reshape(arr.shape)
        mujoco.mj_setState(self.model, self.data, phys, _STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)
        self._rest_z = np.asarray(state["rest_z"], dtype=np.float64).copy()
        self._steps = int(state["steps"])
        self._task = TaskInstance.from_dict(json.loads(str(state["task"])))
        self._task_dict = self._task.to_dict()
        self._layout_json = str(state["layout"])
        layout = json.loads(self._layout_json)
        slots = [s.slot for s in SLOTS]
        self._names = {slots.index(o["slot"]): o["name"] for o in layout["objects"]}
        self._last_rgb = None

    # ------------------------------------------------------------------ observation, success
    def _render(self) -> np.ndarray:
        if not self.cfg.render:
            return np.zeros((self.cfg.image_size,) * 2 + (3,), np.uint8)
        if self._renderer is None:
            self._renderer = EgoRenderer(self.model, self.cfg.image_size, self.cfg.image_size)
        self._last_rgb = self._renderer.render(self.data)
        return self._last_rgb

    def _obs(self) -> dict[str, np.ndarray]:
        proprio = np.concatenate([self.data.qpos[self._qadr], self.data.qvel[self._dadr]]).astype(np.float32)
        return {"rgb": self._render(), "proprio": proprio}

    def _info(self, ok: bool) -> dict[str, Any]:
        return {"success": bool(ok), "task": self._task_dict, "instruction": self._task.instruction}

    def held(self) -> dict[str, list[str]]:
        """Objects pinched between both fingers of each hand (from the contact list)."""
        d = self.data
        out: dict[str, list[str]] = {"left": [], "right": []}
        if d.ncon == 0:
            return out
        g = d.contact.geom  # (ncon, 2)
        code = self._finger_code[g]  # (ncon, 2): 0 not a finger, 1..4 = left a, left b, right a, right b
        other = self._geom_slot[g[:, ::-1]]  # (ncon, 2): slot touched by that finger (-1 none)
        for k, side in ((1, "left"), (3, "right")):
            both = set(other[code == k].tolist()) & set(other[code == k + 1].tolist())
            out[side] = [self._names[i] for i in both if i in self._names]
        return out

    def snapshot(self) -> dict[str, Any]:
        """The sim state in the form `envs.tasks.success` reads."""
        objs = {}
        for i, name in self._names.items():
            objs[name] = {"pos": self.data.xpos[self._slot_body[i]].copy(), "rest_z": self._rest_z[i]}  # not a live view
        needs_held = self._task is None or self._task.family not in ("drawer", "tissue")
        return {"table_z": TABLE_Z, "objects": objs, "held": self.held() if needs_held else {"left": [], "right": []},
                "joints": {"drawer": float(self.data.qpos[self._drawer_q]), "tissue": float(self.data.qpos[self._tissue_q])}}

    def _success(self) -> bool:
        return bool(success(self._task, self.snapshot()))

    # ------------------------------------------------------------------ scene description
    def scene_description(self) -> dict[str, Any]:
        """Objects (name, colour, shape, position, yaw in degrees), pairwise relations and the task, for captioning."""
        from envs.tasks import parse_object

        layout = json.loads(self._layout_json)
        objs = []
        for i, name in sorted(self._names.items()):
            colour, shape = parse_object(name)
            pos = self.data.xpos[self._slot_body[i]]
            objs.append({"name": name, "colour": colour or _FIXED_COLOUR_NAMES.get(shape, "grey"),
                         "shape": shape, "position": [round(float(v), 3) for v in pos],
                         "yaw_deg": round(math.degrees(self.object_yaw(name)), 1)})  # about the table's normal
        rel = []
        for a in objs:
            for b in objs:
                if a is b:
                    continue
                pa, pb = np.array(a["position"]), np.array(b["position"])
                dxy = np.linalg.norm(pa[:2] - pb[:2])
                if b["shape"] == "bowl" and dxy < 0.06 and pa[2] < pb[2] + 0.08:
                    rel.append({"subject": a["name"], "relation": "in", "object": b["name"]})
                elif b["shape"] == "plate" and dxy < 0.07 and 0 < pa[2] - pb[2] < 0.08:
                    rel.append({"subject": a["name"], "relation": "on", "object": b["name"]})
                elif pa[1] - pb[1] > 0.05 and a["name"] < b["name"]:
                    rel.append({"subject": a["name"], "relation": "left of", "object": b["name"]})
                elif pb[1] - pa[1] > 0.05 and a["name"] < b["name"]:
                    rel.append({"subject": a["name"], "relation": "right of", "object": b["name"]})
                if dxy < 0.12 and a["name"] < b["name"]:
                    rel.append({"subject": a["name"], "relation": "near", "object": b["name"]})
        return {"objects": objs, "relations": rel, "table": {"material": layout.get("table_material"),
                                                             "rgb": layout.get("table_rgb")},
                "task": dict(self._task_dict), "instruction": self._task.instruction if self._task else None}

    # ------------------------------------------------------------------ end-effector delta actions
    def ik(self, side: str):
        """The (lazily built) IK solver of one arm, sharing this env's model."""
        if side not in self._iks:
            from envs.ik import ArmIK

            self._iks[side] = ArmIK(self.model, side)
        return self._iks[side]

    def _ee_delta_to_joint(self, a: np.ndarray) -> np.ndarray:
        ctrl = self.data.ctrl.copy()
        for k, side in enumerate(("left", "right")):
            ik = self.ik(side)
            sl = ARM_SLICE[side]
            pos, mat = ik.forward(ctrl[sl])
            quat = np.zeros(4)
            mujoco.mju_mat2Quat(quat, mat.reshape(-1))
            mujoco.mju_quatIntegrate(quat, a[6 * k + 3: 6 * k + 6] * EE_ROT_STEP, 1.0)
            ctrl[sl], _ = ik.solve(pos + a[6 * k: 6 * k + 3] * EE_POS_STEP, quat, ctrl[sl], iters=15)
            ctrl[GRIPPER_INDEX[side]] = (a[12 + k] + 1.0) / 2.0 * GRIPPER_OPEN
        return ctrl


_FIXED_COLOUR_NAMES = {"mug": "white", "bowl": "light blue", "plate": "white", "lunchbox": "blue",
                       "tissue_box": "green"}


def _layout_to_dict(layout: Layout) -> dict[str, Any]:
    return {"objects": [{"name": p.name, "slot": p.slot, "xy": list(p.xy), "yaw": p.yaw,
                         "colour": list(p.colour) if p.colour else None} for p in layout.objects],
            "table_material": layout.table_material, "table_rgb": list(layout.table_rgb),
            "floor_rgb": list(layout.floor_rgb), "light_pos": list(layout.light_pos),
            "light_diffuse": layout.light_diffuse, "drawer_q": layout.drawer_q}


__all__ = ["ENV_ID", "HumanoidTabletopEnv"]

ENV_ID = "flywheel/HumanoidTabletop-v0"
if ENV_ID not in gym.registry:  # also done by envs.register_envs(); kept here so the id exists on import
    gym.register(id=ENV_ID, entry_point="envs.tabletop:HumanoidTabletopEnv")
