"""The world model as a policy evaluator: predict each policy's success without running the robot.

For every policy "checkpoint" and every curated initial state, the policy is rolled out *inside* the
action-conditioned world model in evaluation mode (`WorldModel.predict`): it starts from the real first
frame; the policy acts on the current (predicted) frame and a proprio estimate (qpos = the last
commanded joint targets, qvel = their finite difference); the world model predicts the frames of that
action chunk; this repeats to the horizon, and the success head on the final predicted frame is the
predicted success probability. The same policies then run for real in sim from the same states. Across
checkpoints we report Pearson r between predicted and real success and the pairwise ranking accuracy for
pairs whose true success differs by at least 15 points (the 1X world-model evaluation protocol).

What each kind of policy sees (stated because it matters for honesty):
- Observation-driven policies (`random`, `imagine_then_act`) run closed loop inside the world model:
  they only ever see predicted frames and the proprio estimate.
- The scripted expert and play read privileged simulator state (object poses), which a world model does
  not have. They are evaluated as an *open-loop plan computed from the initial state only*: the script is
  run against a private kinematic copy of the initial scene (joints placed at the commanded targets,
  objects left where they were, an object assumed to follow a gripper that closes on it: the nominal
  outcome of a grasp). Nothing after the initial state is observed. The *same* open-loop plan is what
  runs in sim for the real success, so prediction and truth are about the same policy. (Replaying actions
  recorded from a real rollout would leak the real outcome into the actions, so we do not.)
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flywheel.errors import FlywheelError
from flywheel.evaluation.stats import pairwise_ranking_accuracy, pearson_r, wilson_interval

MIN_GAP = 0.15  # pairs whose true success differs by at least this count for ranking accuracy
# expert noise levels that spread true success (measured: bench/bench_wm_ranking.py)
DEFAULT_EXPERT_NOISES = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


# -- initial states ----------------------------------------------------------------------------------
@dataclass
class InitialState:
    """One curated start: a recorded simulator state (restored exactly by `env.set_state`)."""

    key: str  # "in_distribution:12" or "episode:41"
    task: dict[str, Any]
    instruction: str
    state: dict[str, np.ndarray]


def states_from_split(env_cfg: Any, split: str = "in_distribution", n: int = 8) -> list[InitialState]:
    """The deterministic CI subset of a split, each reset once and captured with `get_state()`."""
    from envs.splits import ci_subset
    from envs.tabletop import HumanoidTabletopEnv

    env = HumanoidTabletopEnv(dataclasses.replace(env_cfg, render=False), render_mode=None)
    out = []
    for i, item in enumerate(ci_subset(split, n)):
        task = item.task()
        env.reset(seed=item.seed, options={"task": task})
        out.append(InitialState(f"{split}:{i}", task.to_dict(), item.instruction, env.get_state()))
    env.close()
    return out


def states_from_store(store: Any, n: int = 8, failures_only: bool = True) -> list[InitialState]:
    """Recorded initial states of stored episodes (by default the rollouts that failed: the curated
    long-tail suite), newest first."""
    rows = store.episodes(**({"source": "rollout", "success": False} if failures_only else {}), limit=None)
    out = []
    for row in rows:
        if row.initial_state_uri and row.task:
            out.append(InitialState(f"episode:{row.id}", dict(row.task), row.instruction,
                                    store.load_initial_state(row.id)))
        if len(out) >= n:
            break
    return out


# -- policies ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySpec:
    """A policy "checkpoint": `expert@0.5` (scripted expert at noise 0.5), `play`, `random`,
    `imagine_then_act` (the champions) or `imagine_then_act@WM:IDM` (registered versions)."""

    label: str
    kind: str  # expert | play | random | imagine_then_act
    noise: float = 0.0
    versions: tuple[str, str] = ("champion", "champion")

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        name, _, arg = text.strip().partition("@")
        if name in ("expert", "scripted_expert"):
            try:
                noise = float(arg or 0.0)
            except ValueError:
                raise FlywheelError(f"policy {text!r}: expert noise must be a number (expert@0.5)") from None
            return cls(f"expert@{noise:g}", "expert", noise=noise)
        if name in ("play", "random") and not arg:
            return cls(name, name)
        if name == "imagine_then_act":
            wm, _, idm = arg.partition(":")
            return cls(text.strip(), name, versions=(wm or "champion", idm or "champion"))
        raise FlywheelError(f"unknown policy {text!r}; use expert@NOISE, play, random, imagine_then_act[@WM:IDM]")


def default_specs(has_models: bool = True) -> list[PolicySpec]:
    """Expert noise levels 0..3, play, random and (if models are registered) imagine-then-act."""
    specs = [PolicySpec.parse(f"expert@{n:g}") for n in DEFAULT_EXPERT_NOISES]
    specs += [PolicySpec.parse("play"), PolicySpec.parse("random")]
    return specs + ([PolicySpec.parse("imagine_then_act")] if has_models else [])


class ScriptPlanner:
    """Open-loop plans of the privileged scripts, computed from the initial state only (module docstring)."""

    def __init__(self, env_cfg: Any):
        from envs.tabletop import HumanoidTabletopEnv

        self.env = HumanoidTabletopEnv(dataclasses.replace(env_cfg, render=False), render_mode=None)
        self.site = {s: self.env.model.site(f"{s}_grasp").id for s in ("left", "right")}

    def plan(self, spec: PolicySpec, state: dict[str, np.ndarray], horizon: int, seed: int) -> np.ndarray:
        """`(horizon, 16)` joint targets of the expert (or play) script from `state`."""
        from envs.expert import ScriptedExpert
        from envs.play import PlayPolicy

        env = self.env
        env.reset(options={"state": state})
        impl = PlayPolicy(env, seed=seed) if spec.kind == "play" else ScriptedExpert(env, noise=spec.noise, seed=seed)
        impl.reset(env.task)
        attached: dict[str, tuple[int, np.ndarray]] = {}  # side -> (object slot, object - site offset)
        out = []
        for _ in range(horizon):
            a = impl.act(None)
            out.append(a)
            self._follow(a, attached)
        return np.stack(out).astype(np.float32)

    def _follow(self, a: np.ndarray, attached: dict[str, tuple[int, np.ndarray]]) -> None:
        """Kinematics only: joints at the targets; a closing gripper near an object carries it."""
        import mujoco

        from envs.robot import GRIPPER_INDEX, GRIPPER_OPEN

        env, d = self.env, self.env.data
        d.qpos[env._qadr] = a
        mujoco.mj_kinematics(env.model, d)
        for side, sid in self.site.items():
            site = d.site_xpos[sid].copy()
            if a[GRIPPER_INDEX[side]] > 0.5 * GRIPPER_OPEN:
                attached.pop(side, None)
                continue
            if side not in attached:
                slots = list(env._names)
                if slots:
                    dist = [np.linalg.norm(d.xpos[env._slot_body[i]] - site) for i in slots]
                    k = int(np.argmin(dist))
                    if dist[k] < 0.05:
                        attached[side] = (slots[k], d.xpos[env._slot_body[slots[k]]] - site)
            if side in attached:
                slot, rel = attached[side]
                q = env._slot_qadr[slot]
                d.qpos[q:q + 3] = site + rel
        mujoco.mj_kinematics(env.model, d)


class _PlanActor:
    """Replays an open-loop plan in chunks (ignores observations)."""

    def __init__(self, plan: np.ndarray, chunk: int):
        self.plan, self.chunk, self.t = plan, chunk, 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        out = self.plan[self.t:self.t + self.chunk]
        self.t += len(out)
        return out


class _PolicyActor:
    """A `policies.base.Policy` acting on observations; None means it held still."""

    def __init__(self, policy: Any):
        self.policy = policy

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        out = self.policy.act(obs)
        actions = np.asarray(out.actions, np.float32).reshape(-1, 16)
        return None if out.hold or len(actions) == 0 else actions


@dataclass
class EvalContext:
    """What building actors needs: the product config, the planner, loaded models per spec."""

    cfg: Any
    planner: ScriptPlanner
    models: dict[PolicySpec, tuple[Any, Any]] = field(default_factory=dict)  # imagine_then_act: (wm, idm)

    def actor(self, spec: PolicySpec, st: InitialState, scene: dict[str, Any], horizon: int, seed: int) -> Any:
        """A fresh actor for one episode of `spec` from `st` (the same actor seed in the WM and in sim)."""
        from envs.robot import ACTION_HIGH, ACTION_LOW
        from policies.base import make_policy

        chunk = self.cfg.policy.horizon
        if spec.kind in ("expert", "play"):
            return _PlanActor(self.planner.plan(spec, st.state, horizon, seed), chunk)
        if spec.kind == "random":
            pol = make_policy("random", self.cfg, seed=seed, chunk=chunk)
        else:
            from flywheel.evaluation.feasibility import default_checker

            wm, idm = self.models[spec]
            pol = make_policy("imagine_then_act", self.cfg, world_model=wm, idm=idm,
                              feasibility=default_checker(1.0 / self.cfg.env.control_hz).check,
                              action_low=ACTION_LOW, action_high=ACTION_HIGH, seed=seed,
                              workspace=_workspace(self.cfg.backend.safety.workspace_margin))
        pol.reset(st.task, st.instruction, scene)
        return _PolicyActor(pol)


def load_policy_models(specs: list[PolicySpec], registry: Any) -> dict[PolicySpec, tuple[Any, Any]]:
    """Load (world model, IDM) for each imagine-then-act spec from the registry."""
    from flywheel.hooks import load_checked

    out = {}
    for spec in specs:
        if spec.kind != "imagine_then_act":
            continue
        pair = []
        for kind, ref in zip(("world_model", "idm"), spec.versions):
            m = registry.resolve(kind, ref)
            if m is None:
                raise FlywheelError(f"policy {spec.label}: no {kind} {ref!r} registered")
            pair.append(load_checked(kind, m.path).eval())
        out[spec] = (pair[0], pair[1])
    return out


# -- rollouts ----------------------------------------------------------------------------------------
def frame_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def rollout_in_world_model(wm: Any, actor: Any, rgb0: np.ndarray, proprio0: np.ndarray, caption: str,
                           horizon: int, control_hz: float = 10.0, steps: int | None = None, seed: int = 0) -> float:
    """Roll `actor` closed loop inside `wm` (evaluation mode) for `horizon` actions from the real first
    observation; return the success head's probability on the final predicted frame."""
    n_dof = len(proprio0) // 2
    frame = frame_tensor(rgb0)  # (3, H, W)
    q = np.asarray(proprio0[:n_dof], np.float32)
    qd = np.asarray(proprio0[n_dof:], np.float32)
    t, k = 0, 0
    max_chunk = wm.cfg.num_frames - 1
    while t < horizon:
        obs = {"rgb": to_uint8(frame), "proprio": np.concatenate([q, qd]).astype(np.float32)}
        actions = actor.act(obs)
        if actions is None or len(actions) == 0:
            break  # the policy held still: the episode ends here
        actions = np.asarray(actions, np.float32)[: min(max_chunk, horizon - t)]  # (h, 16)
        video, _ = wm.predict(frame, torch.from_numpy(actions), caption, seed=seed * 1009 + k, steps=steps,
                              pose=torch.from_numpy(q))
        frame = video[-1].clamp(0, 1)  # (3, H, W)
        prev = actions[-2] if len(actions) > 1 else q
        qd = (actions[-1] - prev) * control_hz
        q = actions[-1]
        t, k = t + len(actions), k + 1
    return float(wm.success_probs(frame[None], caption)[0])


def rollout_in_sim(backend: Any, actor: Any, state: dict[str, np.ndarray], horizon: int) -> bool:
    """Run `actor` for real from `state` (as the workers do: the backend's safety filter, stop on
    success, a hold or a refused command is a failure)."""
    from envs.errors import SafetyViolation

    obs = backend.reset(state=state)
    t = 0
    while t < horizon:
        actions = actor.act(obs)
        if actions is None or len(actions) == 0:
            return False
        chunk = np.asarray(actions, np.float32)[: horizon - t]
        try:
            res = backend.step(chunk)
        except SafetyViolation:
            return False
        if res.success:
            return True
        if res.done or not res.observations:
            return False
        obs, t = res.observations[-1], t + len(res.observations)
    return False


# -- the comparison ----------------------------------------------------------------------------------
@dataclass
class PolicyResult:
    """Predicted and real success of one policy over the states (same order as the states)."""

    label: str
    predicted: list[float]
    real: list[bool]
    wm_seconds: float = 0.0  # total time of the world-model rollouts
    sim_seconds: float = 0.0  # total time of the sim rollouts

    @property
    def predicted_rate(self) -> float:
        return float(np.mean(self.predicted)) if self.predicted else math.nan

    @property
    def real_rate(self) -> float:
        return float(np.mean(self.real)) if self.real else math.nan

    def row(self) -> dict[str, Any]:
        lo, hi = wilson_interval(int(sum(self.real)), len(self.real))
        return {"policy": self.label, "predicted": self.predicted_rate, "real": self.real_rate,
                "real_successes": int(sum(self.real)), "n": len(self.real), "ci_low": lo, "ci_high": hi,
                "wm_s_per_episode": self.wm_seconds / max(1, len(self.real)),
                "sim_s_per_episode": self.sim_seconds / max(1, len(self.real))}


@dataclass
class Ranking:
    """Agreement between predicted and real success across policies."""

    pearson_r: float
    pairwise_accuracy: float
    pairs: int
    min_gap: float = MIN_GAP


TIE_TOL = 0.01  # predicted success rates closer than one point do not rank two policies


def compare(predicted: list[float], real: list[float], min_gap: float = MIN_GAP) -> Ranking:
    """Pearson r and pairwise ranking accuracy (pairs with true gap >= min_gap) across policies."""
    if len(predicted) != len(real):
        raise FlywheelError(f"{len(predicted)} predictions for {len(real)} real success rates")
    acc, pairs = pairwise_ranking_accuracy(predicted, real, min_gap, tie_tol=TIE_TOL)
    return Ranking(pearson_r(predicted, real), acc, pairs, min_gap)


def evaluate_policies(cfg: Any, wm: Any, specs: list[PolicySpec], states: list[InitialState], *,
                      registry: Any = None, steps: int | None = None, seed: int = 0, horizon: int | None = None,
                      progress: Callable[[str], None] = lambda _m: None) -> tuple[list[PolicyResult], Ranking]:
    """Predict (world model) and measure (sim) every policy's success on every state; compare."""
    from envs.backend import make_backend

    if not states:
        raise FlywheelError("no initial states to evaluate on")
    if wm.success_head is None or not wm.cfg.action_conditioning:
        raise FlywheelError("the world model needs action conditioning and a success head to evaluate policies")
    horizon = horizon or cfg.env.max_steps
    ctx = EvalContext(cfg, ScriptPlanner(cfg.env))
    if any(s.kind == "imagine_then_act" for s in specs):
        if registry is None:
            raise FlywheelError("imagine_then_act policies need the model registry")
        ctx.models = load_policy_models(specs, registry)
    backend = make_backend("sim", cfg.backend, cfg.env)
    results = {s.label: PolicyResult(s.label, [], []) for s in specs}
    try:
        for i, st in enumerate(states):
            obs0 = backend.reset(state=st.state)
            scene = backend.scene_description()
            for spec in specs:
                ep_seed = seed * 100_003 + i
                res, t0 = results[spec.label], time.perf_counter()
                p = rollout_in_world_model(wm, ctx.actor(spec, st, scene, horizon, ep_seed), obs0["rgb"],
                                           obs0["proprio"], st.instruction, horizon, cfg.env.control_hz,
                                           steps=steps, seed=ep_seed)
                t1 = time.perf_counter()
                ok = rollout_in_sim(backend, ctx.actor(spec, st, scene, horizon, ep_seed), st.state, horizon)
                res.wm_seconds += t1 - t0
                res.sim_seconds += time.perf_counter() - t1
                res.predicted.append(p)
                res.real.append(ok)
            progress(f"state {i + 1}/{len(states)} ({st.key}): " + ", ".join(
                f"{s.label} {results[s.label].predicted[-1]:.2f}/{int(results[s.label].real[-1])}" for s in specs))
    finally:
        backend.close()
        ctx.planner.env.close()
    out = list(results.values())
    return out, compare([r.predicted_rate for r in out], [r.real_rate for r in out])


# -- report --------------------------------------------------------------------------------------------
def write_ranking_report(results: list[PolicyResult], ranking: Ranking, out_dir: str | Path,
                         meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """`wm_ranking.json`, `wm_ranking.md` (the table) and `wm_ranking.png` (predicted vs real) in out_dir."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    summary = {"pearson_r": json_number(ranking.pearson_r), "pairwise_accuracy": json_number(ranking.pairwise_accuracy),
               "pairs": ranking.pairs, "min_gap": ranking.min_gap, "n_policies": len(rows),
               "policies": rows, **(meta or {})}
    paths = {"json": out / "wm_ranking.json", "markdown": out / "wm_ranking.md", "plot": out / "wm_ranking.png"}
    paths["json"].write_text(json.dumps(summary, indent=1))
    headline = (f"Pearson r = {fmt_number(ranking.pearson_r)}; pairwise ranking accuracy = "
                f"{fmt_number(ranking.pairwise_accuracy)} over {ranking.pairs} pairs with a true gap >= "
                f"{ranking.min_gap:.0%}.")
    lines = ["# World model as policy evaluator", "", headline, "",
             "| policy | predicted | real | real 95% CI | n |", "|---|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['predicted']:.3f} | {r['real']:.3f} | [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
              f"| {r['n']} |" for r in rows]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    _scatter(rows, ranking, paths["plot"])
    return paths


def _scatter(rows: list[dict[str, Any]], ranking: Ranking, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for r in rows:
        err = [[max(0.0, r["real"] - r["ci_low"])], [max(0.0, r["ci_high"] - r["real"])]]  # Wilson: rounding
        ax.errorbar(r["predicted"], r["real"], yerr=err,
                    fmt="o", capsize=3)
        ax.annotate(r["policy"], (r["predicted"], r["real"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="predicted success (world model)",
           ylabel="real success (sim, 95% CI)",
           title=f"r = {fmt_number(ranking.pearson_r)}, pairwise acc = {fmt_number(ranking.pairwise_accuracy)} ({ranking.pairs} pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def json_number(x: float) -> float | None:
    """NaN -> None (JSON has no NaN)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def fmt_number(x: float) -> str:
    """Two decimals, or n/a for NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


@lru_cache(maxsize=4)
def _workspace(margin: float) -> Any:
    """The safety filter's hand-workspace check (loads the robot MJCF once per process, not per episode)."""
    from envs.backend import HandWorkspace

    return HandWorkspace(margin)
