"""The humanoid's spaces: action/proprio layout, limits and names, read from the shipped MJCF.

Importing this module is cheap (it parses the XML with ElementTree, no MuJoCo), so policies and the
safety filter can use the spaces without a simulator.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROBOT_XML: str = str(Path(__file__).parent / "assets" / "robot.xml")

ARM_JOINTS: tuple[str, ...] = (
    "shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_yaw", "wrist_pitch", "wrist_roll",
)
SIDES: tuple[str, str] = ("left", "right")

# [left arm 7, right arm 7, left gripper, right gripper]; actuator i drives JOINT_NAMES[i]
JOINT_NAMES: list[str] = (
    [f"left_{j}" for j in ARM_JOINTS] + [f"right_{j}" for j in ARM_JOINTS] + ["left_gripper", "right_gripper"]
)
ACTION_DIM: int = 16
PROPRIO_DIM: int = 32  # [qpos of the 16 actuated joints, qvel of the same]

# slices into the 16-dim action / joint vector
LEFT_ARM = slice(0, 7)
RIGHT_ARM = slice(7, 14)
LEFT_GRIPPER = 14
RIGHT_GRIPPER = 15
ARM_SLICE = {"left": LEFT_ARM, "right": RIGHT_ARM}
GRIPPER_INDEX = {"left": LEFT_GRIPPER, "right": RIGHT_GRIPPER}

# The robot is mirror-symmetric about its sagittal (x-z) plane. Mirroring a joint vector swaps the arms (and
# the grippers) and negates the joints about x and z (roll and yaw); pitch and elbow joints turn about y and
# keep their sign: `q_mirrored = q[MIRROR_PERM] * MIRROR_SIGN`. The head camera sits on that plane, so the
# mirrored pose is what a horizontally flipped frame shows (tests/envs/test_robot.py checks both).
_MIRROR_ARM_SIGN = np.array([1, -1, -1, 1, -1, 1, -1], dtype=np.float32)  # ARM_JOINTS' order
MIRROR_PERM: np.ndarray = np.r_[7:14, 0:7, 15, 14]
MIRROR_SIGN: np.ndarray = np.r_[_MIRROR_ARM_SIGN, _MIRROR_ARM_SIGN, 1.0, 1.0].astype(np.float32)


def mirror_joints(q: np.ndarray) -> np.ndarray:
    """Joint vectors `(..., 16)` of the mirror-image pose (left and right swapped across the sagittal plane)."""
    return q[..., MIRROR_PERM] * MIRROR_SIGN


GRIPPER_OPEN: float = 0.045  # finger opening of one finger (m); the gap between pads is twice this
GRIPPER_CLOSED: float = 0.0


def _read_ctrlranges(path: str) -> tuple[np.ndarray, np.ndarray]:
    root = ET.parse(path).getroot()
    defaults: dict[str, str] = {}
    for d in root.iter("default"):
        cls = d.get("class")
        pos = d.find("position")
        if cls is not None and pos is not None and pos.get("ctrlrange"):
            defaults[cls] = pos.get("ctrlrange")
    by_joint: dict[str, tuple[float, float]] = {}
    for act in root.find("actuator").iter("position"):
        rng = act.get("ctrlrange") or defaults[act.get("class")]
        lo, hi = (float(v) for v in rng.split())
        by_joint[act.get("joint")] = (lo, hi)
    low = np.array([by_joint[j][0] for j in JOINT_NAMES], dtype=np.float32)
    high = np.array([by_joint[j][1] for j in JOINT_NAMES], dtype=np.float32)
    return low, high


ACTION_LOW, ACTION_HIGH = _read_ctrlranges(ROBOT_XML)  # float32 (16,) each

# Home posture (from IK): grasp sites at (0.25, +-0.27, 0.86), ~14 cm above the table and out of the
# camera's way, hands pointing down and tilted 0.35 rad forward, grippers open. Mirror-symmetric arms.
HOME_QPOS: np.ndarray = np.array(
    [0.37, 0.29, 0.18, -2.10, 0.30, 1.41, 0.0] + [0.37, -0.29, -0.18, -2.10, -0.30, 1.41, 0.0] + [GRIPPER_OPEN] * 2,
    dtype=np.float32,
)
