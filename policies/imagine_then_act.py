"""Imagine-then-act: imagine N futures with the world model, extract each one's actions with the IDM,
score and reject, execute the best candidate's first H actions, replan from the next observation.

The models and the feasibility checker are injected (model code never imports SQL, Celery or MuJoCo):
the worker builds them from the registry, tests pass tiny ones. Nothing non-finite or outside the
joint limits is ever returned: such candidates are rejected, and if none is acceptable the policy
asks the runner to hold still and records why. The executed chunk is shortened to the safety filter's
joint-velocity limit, so the filter never has to refuse a chosen plan.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from policies.base import Policy, PolicyOutput
from policies.captions import make_upsampler
from policies.errors import PolicyError

# Default score weights, to be chosen by measurement (bench/bench_scores.py: each score's AUROC against the
# executed outcome). On the demo models (bootstrap v1) no rollout succeeded yet, so no AUROC is defined;
# what was measured: feasibility decides every choice, the success head varies ~0.001 between candidates.
# Kept as is until a data dir with successes ranks the scores. Session 32 (a goal model with 7/24 successes): across
# executed plans goal_progress predicts success (AUROC 0.77), the success head does not (0.42); but the candidates
# of one step barely differ, so weighting goal_progress changed nothing measurable (N=8: 6/24, default 7/24).
# "consistency" only exists with policy.consistency=true; its weight is a guess, not yet measured either.
DEFAULT_WEIGHTS = {"success": 1.0, "feasibility": 0.5, "idm_spread": -0.5, "consistency": 0.5}
# Consensus: exp(-d / CONSENSUS_SCALE), d the mean absolute distance (rad) between a candidate's first H
# targets and the other candidates' of its batch: the candidate nearest the others (the medoid) scores highest.
CONSENSUS_SCALE = 0.1
# Goal progress (world models with goal_joints): exp(-d / GOAL_SCALE), d the mean absolute arm-joint distance (rad)
# between a candidate's last executed target and the task goal it is working toward (the grasp until the goals'
# gripper is commanded closed, then the carry).
GOAL_SCALE = 0.1
# Extracted targets beyond a joint limit by at most this much (rad, or m for grippers) are projected onto
# the limit; further out, the candidate is rejected as a limit violation.
LIMIT_PROJECTION = 0.05
# Violations that make a candidate unexecutable whatever its score.
HARD_VIOLATIONS = ("nonfinite", "joint_limit")  # self-collision lowers the feasibility score


@dataclass
class Candidate:
    """One imagined future and what the planner made of it."""

    index: int
    actions: np.ndarray  # (T-1, A)
    scores: dict[str, float]
    rejected_reason: str | None = None
    chosen: bool = False
    goal_guidance: float | None = None  # the goal guidance it was imagined with (goal models only)

    def record(self) -> dict[str, Any]:
        """JSON-safe: a non-finite score (a NaN from a model) is logged as None."""
        scores = {k: (float(v) if np.isfinite(v) else None) for k, v in self.scores.items()}
        rec = {"index": self.index, "scores": scores, "chosen": self.chosen, "rejected_reason": self.rejected_reason}
        if self.goal_guidance is not None:
            rec["goal_guidance"] = self.goal_guidance
        return rec


def consensus(chunks: list[np.ndarray]) -> list[float]:
    """Each chunk's (H, A) agreement with the others of its batch, in [0, 1]: exp(-d / CONSENSUS_SCALE), d its
    mean absolute distance to the other finite chunks. A lone chunk scores 1, a non-finite one 0."""
    finite = [bool(np.isfinite(c).all()) for c in chunks]
    out = []
    for i, c in enumerate(chunks):
        others = [o for j, o in enumerate(chunks) if j != i and finite[j]]
        if not finite[i]:
            out.append(0.0)
        elif not others:
            out.append(1.0)
        else:
            d = float(np.mean([np.abs(c - o).mean() for o in others]))
            out.append(float(np.exp(-d / CONSENSUS_SCALE)))
    return out


def arm_gap(joints: np.ndarray, goal: np.ndarray) -> float:
    """Mean absolute arm-joint distance (rad) from `joints` to a goal `(A,)` (`envs.goals.task_goals` row): the arms'
    joints head both vectors, the two grippers end the goal and are left out (so `joints` may be a whole proprio)."""
    arms = len(goal) - 2
    return float(np.abs(np.asarray(joints, np.float64)[:arms] - np.asarray(goal, np.float64)[:arms]).mean())


def frame_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


class ImagineThenActPolicy(Policy):
    """Best-of-N imagine-then-act with closed-loop replanning.

    `feasibility(actions (T, A), q0 (A,)) -> report` with `.score` and `.violations` (kind per violation).
    `workspace(targets (H, A)) -> bool (H,)`: the backend safety filter's workspace check (which targets
    keep the hands in the workspace); a candidate whose executed chunk leaves it is rejected, since the
    filter would refuse it.
    `cfg` is the product config (uses `cfg.policy`); `action_low/high` bound the native action space.
    """

    name = "imagine_then_act"

    def __init__(self, cfg: Any, world_model: Any = None, idm: Any = None,
                 feasibility: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                 action_low: np.ndarray | None = None, action_high: np.ndarray | None = None, seed: int = 0,
                 workspace: Callable[[np.ndarray], np.ndarray] | None = None):
        if world_model is None or idm is None:
            raise PolicyError("imagine_then_act needs a world model and an IDM (none registered yet?)")
        self.pcfg = cfg.policy
        self.wm, self.idm, self.feasibility, self.workspace = world_model, idm, feasibility, workspace
        self.low, self.high = action_low, action_high
        self.weights = dict(self.pcfg.score_weights or DEFAULT_WEIGHTS)
        self.upsampler = make_upsampler(self.pcfg.caption_upsampler, self.pcfg.upsampler_url,
                                        self.pcfg.upsampler_model)
        self.seed = seed
        self.caption = ""
        self.plan_step = 0
        self.timings: dict[str, float] = {}  # seconds spent in each part of the last planning step
        # The backend's safety filter refuses a target more than max_joint_velocity / control_hz from the
        # previous one; the executed chunk is projected onto that rate (None: no projection).
        safety, env = getattr(getattr(cfg, "backend", None), "safety", None), getattr(cfg, "env", None)
        vmax, hz = getattr(safety, "max_joint_velocity", None), getattr(env, "control_hz", None)
        self.max_step = vmax / hz * (1 - 1e-3) if vmax and hz else None
        self.last_target: np.ndarray | None = None  # (A,) the last target sent, the filter's reference
        wm_cfg = getattr(world_model, "cfg", None)
        self.context = int(self.pcfg.context_frames or getattr(wm_cfg, "cond_frames", 1))
        if self.context >= self.pcfg.imagine_frames:
            raise PolicyError(f"policy.context_frames ({self.context}) must be below policy.imagine_frames "
                              f"({self.pcfg.imagine_frames})")
        r = int(getattr(wm_cfg, "temporal_factor", 1))
        if (self.context - 1) % r:  # otherwise the current frame would be a generated one, not the observation
            raise PolicyError(f"policy.context_frames ({self.context}) must be 1 + a multiple of the world "
                              f"model's temporal factor ({r})")
        if self.pcfg.consistency and not getattr(wm_cfg, "action_conditioning", True):
            raise PolicyError("policy.consistency needs a world model with action conditioning (it predicts "
                              "each candidate's extracted actions)")
        imagines_joints = bool(getattr(wm_cfg, "imagine_joints", False))
        if self.pcfg.extract_from == "joints" and not imagines_joints:
            raise PolicyError("policy.extract_from=joints needs a world model that imagines the joints (trained with "
                              "world_model.imagine_joints=true)")
        if imagines_joints and self.context != 1:
            raise PolicyError(f"a world model that imagines the joints starts from one frame and its measured joints: "
                              f"policy.context_frames must be 1, got {self.context}")
        self.from_joints = self.pcfg.extract_from == "joints" or (self.pcfg.extract_from == "auto" and imagines_joints)
        self.imagines_joints = imagines_joints
        # a world model conditioned on the task goals (world_model.goal_joints) gets them from the scene at reset
        self.uses_goal = bool(getattr(wm_cfg, "goal_joints", False))
        self.control_hz = float(hz or 10.0)
        self.goal: np.ndarray | None = None
        if self.pcfg.imagine_plan and not getattr(wm_cfg, "imagine_action_loss", 0):
            raise PolicyError("policy.imagine_plan needs a world model with an action head (trained with "
                              "world_model.imagine_action_loss > 0)")
        self.recent: deque[torch.Tensor] = deque(maxlen=self.context)  # the last frames seen, oldest first
        self.observed = 0  # observe() calls since the last act()
        self.sent = 0  # actions in the chunk the last act() returned

    def reset(self, task: dict[str, Any], instruction: str, scene: dict[str, Any] | None = None) -> None:
        self.caption = self.upsampler.upsample(instruction, scene)
        self.goal = None
        if self.uses_goal and scene is not None:
            from envs.goals import task_goals

            try:
                self.goal = task_goals(scene, self.control_hz)
            except Exception as exc:  # a scene the goals cannot be computed from: one clear error before anything moves
                raise PolicyError(f"the grasp goal for {instruction!r} could not be computed from the scene: {exc}") from exc
        self.plan_step = 0
        self.last_target = None
        self.recent.clear()
        self.observed = self.sent = 0

    def set_reference(self, pose: np.ndarray | None) -> None:
        """The backend's safety reference (`Backend.command_reference`): the next chunk is rate-limited from it
        rather than from the last target this planner sent, which is stale after a watchdog hold (the robot
        holds where it was) or a chunk the filter clamped. None or a broken pose keeps the planner's own."""
        if pose is None:
            return
        pose = np.asarray(pose, np.float64).reshape(-1)
        if self.low is not None and pose.shape != np.shape(self.low):
            return
        if np.all(np.isfinite(pose)):
            self.last_target = pose.copy()

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self.recent.append(frame_to_tensor(obs["rgb"]))
        self.observed += 1

    def context_frames(self, frame: torch.Tensor) -> torch.Tensor:
        """The world model's start frames (K, 3, H, W), oldest first, ending with `frame` (the current
        one); before K frames have been seen the oldest is repeated (the scene held still). A runner that
        did not `observe` every step of the last chunk leaves gaps: then only `frame` is used, held."""
        if self.observed < self.sent - 1:  # frames H steps apart are not consecutive context
            self.recent.clear()
        self.observed = 0
        self.recent.append(frame)
        frames = list(self.recent)
        return torch.stack([frames[0]] * (self.context - len(frames)) + frames)

    # -- planning -----------------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray]) -> PolicyOutput:
        p = self.pcfg
        proprio = np.asarray(obs["proprio"], np.float32)
        bad = self._bad_observation(obs, proprio)
        if bad:  # planning from it would compare targets against NaN (no velocity or limit check would bite)
            self.sent = 0
            dim = len(self.low) if self.low is not None else 0
            return PolicyOutput(actions=np.zeros((0, dim), np.float32), hold=True,
                                failure_reason=f"bad observation: {bad}", info={"caption": self.caption})
        start = self.context_frames(frame_to_tensor(obs["rgb"]))  # (K, 3, H, W)
        seed = self.seed * 100_003 + self.plan_step
        self.timings = dict.fromkeys(("imagine_s", "success_s", "extract_s", "feasibility_s", "consistency_s"), 0.0)
        t0 = time.perf_counter()
        cands: list[Candidate] = []
        batches: list[torch.Tensor] = []
        for rnd in range(1 + p.resample_rounds):  # rejection sampling: a fresh batch while none is acceptable
            videos, joints = self._imagine_batch(start, seed + 7919 * rnd, proprio)
            batch = self._score_batch(len(cands), start, videos, proprio, seed + 7919 * rnd,
                                      joints if self.from_joints else None)
            cands += batch
            batches.append(videos)
            if any(c.rejected_reason is None for c in batch):
                break
        self.timings["plan_s"] = time.perf_counter() - t0
        self.timings["rounds"] = len(batches)
        self.plan_step += 1
        ok = [c for c in cands if c.rejected_reason is None]
        videos = torch.cat(batches)
        shown = (videos.nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)  # a NaN future logs as black
        info = {"caption": self.caption, "timings": dict(self.timings),
                "videos": shown.permute(0, 1, 3, 4, 2).numpy()}  # (rounds * N, T, H, W, 3) uint8
        if self.goal is not None:
            info["goal_phase"] = ("grasp", "carry")[self.goal_phase(proprio)]
        if not ok:
            self.sent = 0
            info["candidates"] = [c.record() for c in cands]
            reasons = sorted({c.rejected_reason or "" for c in cands})
            return PolicyOutput(actions=np.zeros((0, len(proprio) // 2), np.float32), hold=True,
                                failure_reason="no acceptable candidate: " + "; ".join(reasons), info=info)
        best = max(ok, key=lambda c: c.scores["combined"])
        best.chosen = True
        info["candidates"] = [c.record() for c in cands]
        chunk = self._rate_limited(best.actions[: p.horizon], proprio)  # (H, A)
        self.last_target = chunk[-1].copy()
        self.sent = len(chunk)
        return PolicyOutput(actions=chunk.astype(np.float32), info=info)

    def _imagine_batch(self, start: torch.Tensor, seed: int,
                       proprio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """N imagined futures (N, T, 3, H, W) from the current frame on, as one batch (with `imagine_plan`, planned
        from the measured joint positions at the head of `proprio`), and their joint positions (N, T, A) when the
        world model imagines them (else None)."""
        p = self.pcfg
        pose = torch.from_numpy(proprio[: len(proprio) // 2].copy())
        kw = {"plan": True, "pose": pose} if p.imagine_plan else {"pose": pose} if self.imagines_joints else {}
        if self.goal is not None:
            kw["goal"] = torch.from_numpy(self.goal)
            scales = self.goal_guidances()
            if any(g != 1.0 for g in scales):
                kw["goal_guidance"] = scales[0] if len(set(scales)) == 1 else scales
        t0 = time.perf_counter()
        frames = start[0] if self.context == 1 else start
        joints = None
        if self.imagines_joints:  # the joints come with the frames (one start frame: nothing to cut)
            imagined, joints = self.wm.imagine_joints(frames, self.caption, n=p.n_candidates, steps=p.sampling_steps,
                                                      guidance=p.guidance, seed=seed, num_frames=p.imagine_frames,
                                                      churn=p.sampling_churn, **kw)
        else:
            imagined = self.wm.imagine(frames, self.caption, n=p.n_candidates, steps=p.sampling_steps,
                                       guidance=p.guidance, seed=seed, churn=p.sampling_churn,
                                       num_frames=p.imagine_frames,  # (N, T, 3, H, W), the K start frames first
                                       **kw)
        self.timings["imagine_s"] += time.perf_counter() - t0
        return imagined[:, self.context - 1:], joints  # from the current frame on: what the robot is to do

    def _score_batch(self, first: int, start: torch.Tensor, videos: torch.Tensor, proprio: np.ndarray,
                     seed: int, joints: torch.Tensor | None = None) -> list[Candidate]:
        """Score and screen one batch of imagined futures; candidate indices start at `first`. With `joints`
        (N, T, A) the IDM reads each candidate's actions off its imagined joints, not its frames."""
        t0 = time.perf_counter()
        success = self.wm.success_probs(videos, self.caption).numpy() if getattr(self.wm, "success_head", 1) is not None \
            else np.full(len(videos), np.nan)
        self.timings["success_s"] += time.perf_counter() - t0
        cands = [self._score(first + i, v, proprio, float(success[i]), seed + i,
                             None if joints is None else joints[i]) for i, v in enumerate(videos)]
        if self.pcfg.consistency:
            self._score_consistency(cands, start, videos, proprio, seed, first)
        for c, score in zip(cands, consensus([c.actions[: self.pcfg.horizon] for c in cands])):
            c.scores["consensus"] = score
        if self.goal is not None:
            row = self.goal[self.goal_phase(proprio)]
            for c, g in zip(cands, self.goal_guidances()):  # the target the executed chunk ends at, after the rate limit
                c.goal_guidance = g
                end = self._rate_limited(c.actions[: self.pcfg.horizon], proprio)[-1]
                c.scores["goal_progress"] = float(np.exp(-arm_gap(end, row) / GOAL_SCALE))
        for c in cands:
            c.scores["combined"] = float(sum(w * c.scores.get(k, 0.0) for k, w in self.weights.items()
                                             if np.isfinite(c.scores.get(k, 0.0))))
        return cands

    def goal_guidances(self) -> list[float]:
        """Each candidate's goal guidance: evenly spaced from `goal_guidance` (candidate 0) to `goal_guidance +
        goal_guidance_spread` (candidate N-1)."""
        p = self.pcfg
        n = p.n_candidates
        return [p.goal_guidance + p.goal_guidance_spread * (k / (n - 1) if n > 1 else 0.0) for k in range(n)]

    def goal_phase(self, proprio: np.ndarray) -> int:
        """Which task goal the robot works toward: 0 (the grasp) until the gripper the goals close is commanded
        nearer closed than open (the last target sent, else the measured joints), then 1 (the carry), if known."""
        g = self.goal
        arms = g.shape[1] - 2
        side = arms + int(np.argmax(np.abs(g[1, arms:] - g[0, arms:])))  # the gripper that closes between the goals
        ref = self.last_target if self.last_target is not None else np.asarray(proprio[: g.shape[1]], np.float64)
        closing = abs(ref[side] - g[1, side]) < abs(ref[side] - g[0, side])
        return 1 if closing and np.isfinite(g[1]).all() else 0

    def _bad_observation(self, obs: dict[str, np.ndarray], proprio: np.ndarray) -> str | None:
        """Why an observation cannot be planned from (None if it can): proprio must be finite positions and
        velocities of the action space's joints, rgb a uint8 (H, W, 3) frame."""
        dim = len(self.low) if self.low is not None else None
        if proprio.ndim != 1 or (dim is not None and proprio.shape[0] < 2 * dim):
            return f"proprio has shape {proprio.shape}, expected ({2 * dim if dim else 'D'},)"
        if not np.isfinite(proprio).all():
            return f"proprio is non-finite at index {int(np.argmin(np.isfinite(proprio)))}"
        rgb = np.asarray(obs["rgb"])
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            return f"rgb must be a uint8 (H, W, 3) frame, got {rgb.dtype} {rgb.shape}"
        return None

    def _rate_limited(self, actions: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """Shorten each step of `actions (H, A)` to `max_step` from the previous target (the last one sent,
        or the measured joint positions at the start): the chunk the safety filter will accept. The
        feasibility score already penalised the candidate for needing it."""
        if self.max_step is None:
            return actions
        prev = self.last_target if self.last_target is not None else proprio[: actions.shape[1]].astype(np.float64)
        out = np.array(actions, np.float64)
        for t in range(len(out)):
            out[t] = prev + np.clip(out[t] - prev, -self.max_step, self.max_step)
            prev = out[t]
        return out if self.low is None else np.clip(out, self.low, self.high)

    def _score(self, index: int, video: torch.Tensor, proprio: np.ndarray, success: float, seed: int,
               joints: torch.Tensor | None = None) -> Candidate:
        t0 = time.perf_counter()
        if joints is not None:  # the IDM reads the imagined joints (policy.extract_from)
            if self.pcfg.clamp_imagined_joints and self.low is not None:
                a = len(self.low)
                lo, hi = (torch.as_tensor(v, dtype=joints.dtype) for v in (self.low, self.high))
                joints = joints.clone()
                joints[:, :a] = torch.minimum(torch.maximum(joints[:, :a], lo), hi)  # (NaN stays NaN)
            ext = self.idm.extract_joints(joints, torch.from_numpy(proprio))
        else:
            ext = self.idm.extract(video, torch.from_numpy(proprio), seed=seed)
        self.timings["extract_s"] += time.perf_counter() - t0
        actions = ext.actions.numpy().astype(np.float64)
        spread = float(ext.spread.mean()) if ext.spread.numel() else 0.0
        scores = {"success": success, "idm_spread": spread}
        reason = None
        if not np.isfinite(actions).all():
            reason = "non-finite actions"
        elif self.low is not None:
            over = np.maximum(self.low - actions, actions - self.high).max()
            if over > LIMIT_PROJECTION:
                reason = f"joint limit violated by {over:.3f}"
            actions = np.clip(actions, self.low, self.high)
        if self.feasibility is not None and reason is not None:
            scores["feasibility"] = 0.0  # not executable at all
        elif self.feasibility is not None:
            t0 = time.perf_counter()
            rep = self.feasibility(actions[: self.pcfg.horizon], proprio[: actions.shape[1]])
            self.timings["feasibility_s"] += time.perf_counter() - t0
            scores["feasibility"] = float(rep.score)
            hard = sorted({v.kind for v in rep.violations if v.kind in HARD_VIOLATIONS})
            if hard:
                reason = "infeasible: " + ", ".join(hard)
            elif rep.score < self.pcfg.min_feasibility:
                reason = f"feasibility {rep.score:.2f} below {self.pcfg.min_feasibility}"
        if reason is None and self.workspace is not None:
            inside = np.asarray(self.workspace(self._rate_limited(actions[: self.pcfg.horizon], proprio)), bool)
            if not inside.all():
                reason = f"leaves the workspace at step {int(np.argmin(inside))}"
        if reason is None and np.isfinite(success) and success < self.pcfg.min_success_prob:
            reason = f"success probability {success:.2f} below {self.pcfg.min_success_prob}"
        return Candidate(index=index, actions=actions, scores=scores, rejected_reason=reason)

    def _score_consistency(self, cands: list[Candidate], start: torch.Tensor, videos: torch.Tensor,
                           proprio: np.ndarray, seed: int, first: int = 0) -> None:
        """Score "consistency" in [0, 1]: PSNR / 40 dB between each acceptable candidate's imagined future
        and the world model's action-conditioned prediction of its extracted actions (one batch); the
        PSNR itself is logged as `consistency_psnr`. Rejected candidates get 0. The transitions between
        the K start frames are not known to the planner and are given as holding the current joints."""
        t0 = time.perf_counter()
        ok = [c for c in cands if c.rejected_reason is None]
        for c in cands:
            c.scores["consistency"] = 0.0
        if ok:
            future = torch.as_tensor(np.stack([c.actions for c in ok]), dtype=torch.float32)  # (M, T-K, A)
            held = torch.as_tensor(proprio[: future.shape[2]]).expand(len(ok), self.context - 1, -1)  # the past
            actions = torch.cat([held, future], dim=1)  # (M, T-1, A)
            pose = torch.from_numpy(proprio[: future.shape[2]].copy()) if self.imagines_joints else None
            goal = None if self.goal is None else torch.from_numpy(self.goal)
            pred = self.wm.predict_many(start, actions, self.caption, seed=seed, pose=pose, goal=goal)  # predict_steps
            pred = pred[:, self.context - 1:]  # (M, T, 3, H, W), from the current frame on
            imag = videos[[c.index - first for c in ok]]
            mse = (pred[:, 1:] - imag[:, 1:]).nan_to_num(1.0).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            psnr = (-10.0 * torch.log10(mse)).numpy()
            for c, db in zip(ok, psnr):
                c.scores["consistency_psnr"] = float(db)
                c.scores["consistency"] = float(np.clip(db / 40.0, 0.0, 1.0))
        self.timings["consistency_s"] += time.perf_counter() - t0

    def logs(self) -> dict[str, Any]:
        return {"caption": self.caption, "plan_steps": self.plan_step,
                **({"grasp_goal": [round(float(v), 4) for v in self.goal[0]],
                    "carry_goal": [round(float(v), 4) for v in self.goal[1]]} if self.goal is not None else {})}
