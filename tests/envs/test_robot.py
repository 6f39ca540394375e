"""The robot's spaces: the mirror map of joint vectors against MuJoCo's forward kinematics."""
from __future__ import annotations

import mujoco
import numpy as np

from envs import robot


def test_mirrored_joints_put_the_other_hand_at_the_mirror_image_pose() -> None:
    """`mirror_joints` swaps the arms across the sagittal plane: the right grasp site of the mirrored pose is
    the left one's position with y negated and its orientation reflected (M R M), for random poses."""
    m = mujoco.MjModel.from_xml_path(robot.ROBOT_XML)
    d = mujoco.MjData(m)
    adr = [m.joint(n).qposadr[0] for n in robot.JOINT_NAMES]
    reflect = np.diag([1.0, -1.0, 1.0])
    rng = np.random.default_rng(0)

    def site(q: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        d.qpos[:] = 0
        d.qpos[adr] = q
        mujoco.mj_kinematics(m, d)
        return d.site(name).xpos.copy(), d.site(name).xmat.reshape(3, 3).copy()

    for _ in range(10):
        q = rng.uniform(robot.ACTION_LOW, robot.ACTION_HIGH).astype(np.float32)
        qm = robot.mirror_joints(q)
        assert qm.shape == (16,) and not np.allclose(qm, q)
        np.testing.assert_allclose(robot.mirror_joints(qm), q)  # an involution
        for a, b in (("left_grasp", "right_grasp"), ("right_grasp", "left_grasp")):
            pa, ra = site(q, a)
            pb, rb = site(qm, b)
            np.testing.assert_allclose(pb, pa * [1, -1, 1], atol=1e-5)
            np.testing.assert_allclose(rb, reflect @ ra @ reflect, atol=1e-5)


def test_the_mirror_map_keeps_the_limits_and_the_home_pose() -> None:
    """Mirrored limits are the other side's limits (so a mirrored target is as feasible as the original), and
    the home posture is its own mirror image."""
    lo, hi = robot.mirror_joints(robot.ACTION_LOW), robot.mirror_joints(robot.ACTION_HIGH)
    np.testing.assert_allclose(np.minimum(lo, hi), robot.ACTION_LOW)
    np.testing.assert_allclose(np.maximum(lo, hi), robot.ACTION_HIGH)
    np.testing.assert_allclose(robot.mirror_joints(robot.HOME_QPOS), robot.HOME_QPOS)
