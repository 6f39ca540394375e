"""The tabletop scene: robot + table + every object slot in one MJCF, and seeded layouts of it.

One compiled model holds every object slot so the state vector has a fixed size. A *layout* assigns
semantic objects ("red cube", "bowl") to slots, poses and colours; slots not in use are *parked*:
moved off the table, hidden (alpha 0), made contact-free and gravity-compensated so they float still.
Layouts only touch `qpos` and a few model arrays (rgba, contype, gravcomp, material, lights), all of
which the env saves in `get_state()`, so a recorded state replays exactly.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from envs.robot import ROBOT_XML
from envs.tasks import COLOURS, FIXED_OBJECTS, TaskInstance, parse_object, pickables

TABLE_Z = 0.72  # height of the table top
WORKSPACE = ((0.30, 0.52), (-0.24, 0.24))  # x, y ranges where objects are placed
OBJ = 'contype="1" conaffinity="3"'
FIXED_RGBA = {"mug": "0.93 0.93 0.9 1", "bowl": "0.72 0.8 0.92 1", "plate": "0.96 0.96 0.96 1",
              "lunchbox": "0.3 0.58 0.82 1", "tissue_box": "0.55 0.78 0.55 1"}


@dataclass(frozen=True)
class SlotSpec:
    """One object slot of the model: its body, shape, footprint radius and rest height of its origin."""

    slot: str
    shape: str
    radius: float  # footprint radius for non-overlapping placement (m)
    rest_z: float  # height of the body origin above the table when resting
    half_height: float  # half of the object's height (used by the expert)


SLOTS: tuple[SlotSpec, ...] = (
    *(SlotSpec(f"cube_{i}", "cube", 0.035, 0.022, 0.022) for i in range(4)),
    *(SlotSpec(f"cylinder_{i}", "cylinder", 0.035, 0.030, 0.030) for i in range(2)),
    *(SlotSpec(f"sphere_{i}", "sphere", 0.035, 0.025, 0.025) for i in range(2)),
    SlotSpec("mug", "mug", 0.05, 0.045, 0.045),
    SlotSpec("bowl", "bowl", 0.085, 0.0, 0.02),
    SlotSpec("plate", "plate", 0.09, 0.007, 0.007),
    SlotSpec("lunchbox", "lunchbox", 0.14, 0.0, 0.05),
    SlotSpec("tissue_box", "tissue_box", 0.12, 0.0, 0.045),
)
SLOT_BY_NAME = {s.slot: s for s in SLOTS}
TABLE_COLOURS = {"train": [(0.62, 0.45, 0.30), (0.72, 0.58, 0.42), (0.50, 0.36, 0.26)],
                 "ood": [(0.30, 0.40, 0.62), (0.35, 0.58, 0.38), (0.55, 0.55, 0.58)]}
FLOOR_COLOURS = {"train": [(0.55, 0.55, 0.52), (0.45, 0.47, 0.50)], "ood": [(0.70, 0.30, 0.25), (0.25, 0.30, 0.45)]}


def _object_xml(s: SlotSpec) -> str:
    """Body XML of one slot; geoms named <slot>_* get the slot's colour, others keep theirs."""
    n = s.slot
    head = f'<body name="{n}" pos="-2 {SLOTS.index(s) * 0.4:.2f} 0.5"><freejoint name="{n}"/>'
    o = f'{OBJ} rgba="{FIXED_RGBA.get(s.shape, "0.5 0.5 0.5 1")}"'
    if s.shape == "cube":
        body = f'<geom name="{n}_c" type="box" size="0.022 0.022 0.022" mass="0.05" {OBJ}/>'
    elif s.shape == "cylinder":
        body = f'<geom name="{n}_c" type="cylinder" size="0.022 0.03" mass="0.05" {OBJ}/>'
    elif s.shape == "sphere":
        body = f'<geom name="{n}_c" type="sphere" size="0.025" mass="0.05" {OBJ}/>'
    elif s.shape == "mug":
        body = (f'<geom name="{n}_c" type="cylinder" size="0.032 0.045" mass="0.09" {o}/>'
                f'<geom name="{n}_handle" type="box" pos="0.044 0 0" size="0.012 0.005 0.026" mass="0.01" {o}/>')
    elif s.shape == "bowl":
        walls = "".join(
            f'<geom name="{n}_w{k}" type="box" pos="{0.068 * np.cos(a):.4f} {0.068 * np.sin(a):.4f} 0.026" '
            f'euler="0 0 {a:.4f}" size="0.004 0.019 0.022" mass="0.015" {o}/>'
            for k, a in enumerate(np.linspace(0, 2 * np.pi, 12, endpoint=False)))
        body = f'<geom name="{n}_base" type="cylinder" pos="0 0 0.004" size="0.066 0.004" mass="0.1" {o}/>' + walls
    elif s.shape == "plate":
        body = f'<geom name="{n}_c" type="cylinder" size="0.085 0.007" mass="0.2" {o}/>'
    elif s.shape == "lunchbox":  # housing open towards -x (the robot); the drawer slides out along -x
        box = [("bot", "0 0 0.003", "0.08 0.1 0.003"), ("top", "0 0 0.097", "0.08 0.1 0.003"),
               ("l", "0 0.097 0.05", "0.08 0.003 0.05"), ("r", "0 -0.097 0.05", "0.08 0.003 0.05"),
               ("back", "0.077 0 0.05", "0.003 0.1 0.05")]
        drawer = [("dbot", "0 0 0.01", "0.072 0.09 0.003"), ("dfront", "-0.077 0 0.048", "0.004 0.094 0.04"),
                  ("dback", "0.07 0 0.03", "0.003 0.09 0.018"), ("dl", "0 0.088 0.03", "0.072 0.003 0.018"),
                  ("dr", "0 -0.088 0.03", "0.072 0.003 0.018")]
        body = "".join(f'<geom name="{n}_{k}" type="box" pos="{p}" size="{z}" mass="0.3" {o}/>' for k, p, z in box)
        body += ('<body name="lunchbox_drawer"><joint name="drawer" type="slide" axis="-1 0 0" range="0 0.11" '
                 'damping="3" frictionloss="0.3" armature="0.01"/>'
                 + "".join(f'<geom name="drawer_{k}" type="box" pos="{p}" size="{z}" mass="0.05" rgba="0.9 0.9 0.85 1" {OBJ}/>'
                           for k, p, z in drawer)
                 + f'<geom name="drawer_handle" type="box" pos="-0.103 0 0.07" size="0.022 0.008 0.014" mass="0.02" '
                   f'rgba="0.2 0.2 0.2 1" {OBJ}/></body>')
    elif s.shape == "tissue_box":
        body = (f'<geom name="{n}_c" type="box" pos="0 0 0.045" size="0.06 0.1 0.045" mass="0.3" {o}/>'
                '<body name="tissue" pos="0 0 0.09"><joint name="tissue" type="slide" axis="0 0 1" range="0 0.14" '
                'damping="2" frictionloss="0.4" armature="0.01"/>'
                f'<geom name="tissue" type="box" pos="0 0 0.02" size="0.035 0.005 0.04" mass="0.01" '
                f'rgba="0.97 0.97 0.97 1" {OBJ}/></body>')
    else:  # pragma: no cover - SLOTS is fixed
        raise AssertionError(s.shape)
    return head + body + "</body>"


def build_scene_xml(image_size: int = 64) -> str:
    """The full scene MJCF (robot spliced from ROBOT_XML, table, floor, lights, every object slot)."""
    robot = ET.parse(ROBOT_XML).getroot()
    off = max(int(image_size), 64)
    parts = [
        '<mujoco model="humanoid_tabletop">',
        ET.tostring(robot.find("compiler"), encoding="unicode"),
        ET.tostring(robot.find("option"), encoding="unicode"),
        (f'<visual><global offwidth="{off}" offheight="{off}"/>'
         '<quality shadowsize="0" offsamples="0" numslices="16" numstacks="8"/>'
         '<headlight ambient="0.35 0.35 0.35" diffuse="0.35 0.35 0.35" specular="0 0 0"/></visual>'),
        ET.tostring(robot.find("default"), encoding="unicode"),
        ('<asset>'
        '<texture name="wood" type="2d" builtin="checker" rgb1="1 1 1" rgb2="0.82 0.82 0.82" width="64" height="64"/>'
        '<texture name="speckle" type="2d" builtin="flat" rgb1="1 1 1" rgb2="0.6 0.6 0.6" mark="random" '
        'random="0.15" markrgb="0.55 0.55 0.55" width="64" height="64"/>'
        '<texture name="floor" type="2d" builtin="checker" rgb1="1 1 1" rgb2="0.85 0.85 0.85" width="64" height="64"/>'
        '<material name="table_train" texture="wood" texrepeat="3 4" rgba="0.62 0.45 0.3 1"/>'
        '<material name="table_ood" texture="speckle" texrepeat="2 2" rgba="0.3 0.4 0.62 1"/>'
        '<material name="floor" texture="floor" texrepeat="8 8" rgba="0.55 0.55 0.52 1"/>'
        '</asset>'),
        '<worldbody>',
        ('<light name="key" pos="0.4 0.3 2.2" dir="0 -0.1 -1" directional="false" diffuse="0.6 0.6 0.6" '
         'specular="0.1 0.1 0.1" castshadow="false"/>'),
        f'<geom name="floor" type="plane" size="3 3 0.1" material="floor" {OBJ}/>',
        (f'<body name="table" pos="0.45 0 {TABLE_Z - 0.02}">'
        f'<geom name="table_top" type="box" size="0.3 0.45 0.02" material="table_train" friction="0.8 0.01 0.001" {OBJ}/>'
        + "".join(f'<geom name="table_leg{i}" type="box" pos="{sx * 0.26} {sy * 0.41} {-(TABLE_Z - 0.02) / 2}" '
                  f'size="0.02 0.02 {(TABLE_Z - 0.02) / 2:.3f}" rgba="0.3 0.25 0.2 1" contype="0" conaffinity="0"/>'
                  for i, (sx, sy) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]))
        + '</body>'),
        *(ET.tostring(b, encoding="unicode") for b in robot.find("worldbody")),
        *(_object_xml(s) for s in SLOTS),
        '</worldbody>',
        ET.tostring(robot.find("equality"), encoding="unicode"),
        ET.tostring(robot.find("actuator"), encoding="unicode"),
        '</mujoco>',
    ]
    return "".join(parts)


# ---------------------------------------------------------------- layouts
@dataclass
class Placed:
    """One semantic object in a layout."""

    name: str  # "red cube", "bowl"
    slot: str  # "cube_0"
    colour: tuple[float, float, float] | None
    xy: tuple[float, float]
    yaw: float


@dataclass
class Layout:
    """Everything a seed decides about a scene; applied to the model by the env."""

    objects: list[Placed]
    table_material: str  # "table_train" | "table_ood"
    table_rgb: tuple[float, float, float]
    floor_rgb: tuple[float, float, float]
    light_pos: tuple[float, float, float]
    light_diffuse: float
    drawer_q: float = 0.0


def _slot_for(name: str, used: set[str]) -> str:
    _, shape = parse_object(name)
    if name in FIXED_OBJECTS:
        return FIXED_OBJECTS[name]
    for s in SLOTS:
        if s.shape == shape and s.slot not in used:
            return s.slot
    raise AssertionError(f"no free slot for {name}")


def _distractors(task: TaskInstance, rng: np.random.Generator, taken: list[str]) -> list[str]:
    pool = [n for n in pickables(task.pool) if n not in taken]
    k = int(rng.integers(1, 3))
    shapes_left = {"cube": 4, "cylinder": 2, "sphere": 2, "mug": 1}
    for n in taken:
        shape = parse_object(n)[1]
        if shape in shapes_left:
            shapes_left[shape] -= 1
    out: list[str] = []
    for i in rng.permutation(len(pool)):
        shape = parse_object(pool[i])[1]
        if shapes_left.get(shape, 0) > 0 and len(out) < k:
            out.append(pool[i])
            shapes_left[shape] -= 1
    return out


def sample_layout(task: TaskInstance, seed: int) -> Layout:
    """Seeded scene for a task: its objects, 1-2 distractors, poses, colours, table and lighting."""
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    fam, roles = task.family, task.objects
    names = list(dict.fromkeys(roles.values()))
    names += _distractors(task, rng, names)
    used: set[str] = set()
    placed: list[Placed] = []
    (x0, x1), (y0, y1) = WORKSPACE
    for name in names:
        slot = _slot_for(name, used)
        used.add(slot)
        spec = SLOT_BY_NAME[slot]
        colour, _ = parse_object(name)
        for _attempt in range(200):
            yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))
            if slot == "lunchbox":
                xy = (rng.uniform(0.50, 0.54), rng.uniform(-0.10, 0.10)); yaw = 0.0
            elif slot == "tissue_box":
                xy = (rng.uniform(0.40, 0.50), rng.uniform(-0.12, 0.12)); yaw = 0.0
            elif fam == "push" and name == roles["object"]:  # push forwards/sideways, within reach
                xy = (rng.uniform(0.33, 0.40), rng.uniform(-0.18, 0.18))
            elif fam == "push" and name == roles.get("target"):
                obj = placed[0].xy
                ang, dist = rng.uniform(-1.1, 1.1), rng.uniform(0.15, 0.20)
                xy = (float(np.clip(obj[0] + dist * np.cos(ang), x0, x1)),
                      float(np.clip(obj[1] + dist * np.sin(ang), y0, y1)))
            elif fam == "handover" and name == roles["object"]:
                sgn = 1.0 if task.params.get("from", "left") == "left" else -1.0
                xy = (rng.uniform(0.32, 0.45), sgn * rng.uniform(0.08, 0.2))
            else:
                xy = (rng.uniform(x0 + spec.radius * 0.3, x1), rng.uniform(y0 + spec.radius * 0.5, y1 - spec.radius * 0.5))
            ok = all(np.hypot(xy[0] - p.xy[0], xy[1] - p.xy[1]) > spec.radius + SLOT_BY_NAME[p.slot].radius + 0.02
                     for p in placed)
            if fam == "drawer" and slot != "lunchbox" and placed:  # keep the drawer's path clear
                lb = placed[0]
                ok = ok and not (abs(xy[1] - lb.xy[1]) < 0.16 and xy[0] < lb.xy[0] + 0.1)
            if ok:
                break
        placed.append(Placed(name, slot, COLOURS[colour] if colour else None, (float(xy[0]), float(xy[1])), yaw))
    kind = "ood" if task.pool == "ood_objects" else "train"
    table_rgb = TABLE_COLOURS[kind][int(rng.integers(len(TABLE_COLOURS[kind])))]
    jitter = rng.uniform(-0.05, 0.05, size=3)
    return Layout(
        objects=placed,
        table_material="table_ood" if kind == "ood" else "table_train",
        table_rgb=tuple(float(np.clip(c + j, 0, 1)) for c, j in zip(table_rgb, jitter)),
        floor_rgb=FLOOR_COLOURS[kind][int(rng.integers(len(FLOOR_COLOURS[kind])))],
        light_pos=(float(rng.uniform(0.2, 0.6)), float(rng.uniform(-0.4, 0.4)), float(rng.uniform(1.8, 2.4))),
        light_diffuse=float(rng.uniform(0.45, 0.75)),
        drawer_q=float(rng.uniform(0.085, 0.105)) if task.params.get("verb") == "close" else 0.0,
    )
