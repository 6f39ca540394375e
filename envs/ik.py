"""Damped-least-squares inverse kinematics for one 7-DoF arm's grasp site.

Works on a private MjData so solving never disturbs the simulation. The solve minimises
    |W (J dq - e)|^2 + damping |dq|^2 + posture |q + dq - q_rest|^2
per iteration (Levenberg-Marquardt with a weak pull towards a rest posture for the 7th DoF), clamps
to joint limits, and stops when the pose error is below tolerance.

Self-collision avoidance: the arm's elbow and forearm are kept `clearance` metres away from the
torso's collision geoms (chest, pelvis, pedestal, neck). Whenever one comes closer (`mj_geomDistance`), a
row pushing its nearest point away from the torso along the separating direction joins the least
squares, weighted by `clearance_weight`. The simulated robot does not collide with itself (its
collision bits say so), but the kinematic feasibility check does: without this, 18% of the expert's
pick/place chunks swung an elbow or forearm through the body and failed the check that guards the real
robot.
"""
from __future__ import annotations

import mujoco
import numpy as np

from envs.robot import ARM_JOINTS, ARM_SLICE, HOME_QPOS


def yaw_quat(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a top-down grasp: hand pointing down (-z), rotated by yaw about z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


class ArmIK:
    """IK for the `side` ("left"/"right") arm's grasp site in a model that contains the robot."""

    def __init__(self, model: mujoco.MjModel, side: str, rot_weight: float = 0.3,
                 damping: float = 1e-3, posture: float = 2e-3, clearance: float = 0.03,
                 clearance_weight: float = 2.0) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.side = side
        self.site = model.site(f"{side}_grasp").id
        joints = [model.joint(f"{side}_{j}") for j in ARM_JOINTS]
        self.qadr = np.array([j.qposadr[0] for j in joints])
        self.dadr = np.array([j.dofadr[0] for j in joints])
        self.lo = np.array([j.range[0] for j in joints])
        self.hi = np.array([j.range[1] for j in joints])
        self.rest = HOME_QPOS[ARM_SLICE[side]].astype(np.float64)
        self.w = np.array([1.0, 1.0, 1.0, rot_weight, rot_weight, rot_weight])
        self.damping, self.posture = damping, posture
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self.clearance, self.clearance_weight = clearance, clearance_weight
        torso = model.body("torso").id
        self._torso_geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == torso
                             and (model.geom_contype[g] or model.geom_conaffinity[g])]
        self._arm_geoms = [model.geom(f"{side}_{n}").id for n in ("elbow", "forearm")]
        self._fromto = np.zeros(6)
        self._jacc = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grasp-site position (3,) and rotation matrix (3, 3) for arm joints q (7,)."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(self, pos: np.ndarray, quat: np.ndarray | None, q0: np.ndarray,
              iters: int = 40, tol: float = 1e-3, posture: float | None = None,
              avoid_torso: bool = True) -> tuple[np.ndarray, float]:
        """Arm joints (7,) reaching `pos` (3,) with orientation `quat` (w,x,y,z) or any orientation if
        None, starting from q0 (7,). `posture` overrides the pull towards the rest posture.
        Returns (q, final position error in m). With `avoid_torso` the arm keeps its clearance from the
        torso, at some cost in reach where the target is close to the body."""
        posture = self.posture if posture is None else posture
        q = np.clip(np.asarray(q0, dtype=np.float64).copy(), self.lo, self.hi)
        m, d = self.model, self.data
        err = np.zeros(6)
        cur_quat, dq_quat = np.zeros(4), np.zeros(4)
        pos_err = np.inf
        for _ in range(iters):
            d.qpos[self.qadr] = q
            mujoco.mj_kinematics(m, d)
            err[:3] = pos - d.site_xpos[self.site]
            pos_err = float(np.linalg.norm(err[:3]))
            if quat is not None:
                mujoco.mju_mat2Quat(cur_quat, d.site_xmat[self.site])
                mujoco.mju_negQuat(dq_quat, cur_quat)
                mujoco.mju_mulQuat(dq_quat, quat, dq_quat)
                mujoco.mju_quat2Vel(err[3:], dq_quat, 1.0)
            else:
                err[3:] = 0.0
            if pos_err < tol and np.linalg.norm(err[3:]) < 10 * tol:
                break
            mujoco.mj_comPos(m, d)
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site)
            J = np.vstack([self._jacp[:, self.dadr], self._jacr[:, self.dadr]])  # (6, 7)
            if quat is None:
                J[3:] = 0.0
            Jw = J * self.w[:, None]
            H = Jw.T @ Jw + (self.damping + posture) * np.eye(7)
            g = Jw.T @ (self.w * err) + posture * (self.rest - q)
            for row, push in self._clearance_rows() if avoid_torso else ():
                H += np.outer(row, row)
                g += row * push
            dq = np.linalg.solve(H, g)
            step = np.abs(dq).max()
            if step > 0.3:
                dq *= 0.3 / step
            q = np.clip(q + dq, self.lo, self.hi)
        return q, pos_err

    def _clearance_rows(self) -> list[tuple[np.ndarray, float]]:
        """(weighted Jacobian row (7,), weighted push in m) for each arm geom within `clearance` of a
        torso geom, at the current kinematics: moving the nearest point along the direction away from
        the torso by `clearance - distance` restores the margin."""
        if self.clearance <= 0 or self.clearance_weight <= 0:
            return []
        m, d, ft = self.model, self.data, self._fromto
        rows = []
        for a in self._arm_geoms:
            for b in self._torso_geoms:
                dist = mujoco.mj_geomDistance(m, d, a, b, self.clearance, ft)
                if dist >= self.clearance:
                    continue
                away = (ft[:3] - ft[3:]) * (1.0 if dist > 0 else -1.0)  # from the torso towards the arm
                norm = float(np.linalg.norm(away))
                if norm < 1e-9:
                    continue
                mujoco.mj_jac(m, d, self._jacc, None, ft[:3], m.geom_bodyid[a])
                row = self.clearance_weight * (away / norm) @ self._jacc[:, self.dadr]
                rows.append((row, self.clearance_weight * (self.clearance - dist)))
        return rows
