"""The test-time-compute curve: success rate of imagine-then-act for N = 1, 2, 4, 8 candidates per
planning step, with the champion world model and IDM of a data dir (the demo preset's models).

Episodes run in this process (the real policy on the sim backend; no broker), on the first items of each
split (`envs.splits.ci_subset`, families balanced): 100 per point on in_distribution and 40 on new_tasks
and ood_objects by default. Every finished episode is appended to a JSONL file keyed by (N, split, index)
and the model versions, so a run can be stopped and resumed; work is interleaved (index, split, N) so a
partial run gives a balanced curve; `--shard K/M` splits the items between M processes (one results file each:
concatenate them to summarize, duplicates count once). The planning seed is the item index for every N (common random
numbers: candidate 0 of N=8 is the N=1 candidate). 95% Wilson intervals (flywheel/evaluation/stats.py).
Reference policies on the same items (`--controls`, n=0 in the file): `random` (chance),
`scripted_expert` (the items are solvable) and `oracle_wm` (imagine-then-act with one candidate whose
"imagined" future is the expert simulated from the robot's real state, flywheel/evaluation/oracle.py: the
ceiling of this IDM and planner with a perfect world model) and `oracle_actions` (the same, with the
oracle's own actions in place of the IDM's extraction: the planner executing the expert), `oracle_grips`
(the IDM's arms with the oracle's grips) and `oracle_arms` (the oracle's arms with the IDM's grips): which
half of the extraction loses the episodes; `oracle_joints` (the IDM's `extract_joints` reading the
oracle's joint positions: the ceiling of a world model that imagines the joints, `world_model.imagine_joints`).
`noisy_joints:E[:N]` is `oracle_joints` with a random arm error of E times holding still's error over the first
`policy.horizon` targets (flywheel/evaluation/oracle.py `NoisyOracleJoints`, the measure of
bench_imagine_motion.py's `joints_imag_vs_hold`), N candidates per plan (default 1), each with its own error:
how precisely a world model must imagine the joints for this planner to succeed, and whether best-of-N (with
the configured score weights) recovers from imprecise candidates. `biased_joints:E[:N]` draws the error's direction
once per episode (a systematic error, shared by every candidate and plan); `slow_joints:E[:N]` pulls every
arm target back toward the measured joints by E of the way (a world model that imagines too little motion).
`best_joints:E:N` is `noisy_joints:E:N` whose feasibility score is replaced by closeness to the oracle's own
arm targets (exp(-mean abs error / 0.05 rad); hard violations still reject): best-of-N under a perfect score,
the most more candidates can buy at that precision. Run it with `policy.min_feasibility=0` (else the score's
threshold rejects the imprecise candidates).
Baseline: N=1 in the same run; the seeds' anchor is 30% -> 45% (ratio 1.5). Prints one JSON object.

    .venv/bin/python bench/bench_ttc.py --data-dir DIR [--ns 1,2,4,8] [--in-dist 100] [--other 40]
        [--results DIR/bench_ttc.jsonl] [--summary-only] [--idm CKPT] [--world-model CKPT] [override ...]

Extra positional arguments are Hydra overrides of the demo preset (e.g. `policy.horizon=2`); rows are
tagged with them, and a resumed run only counts rows with the same overrides.

With no champions in DIR (and not both of `--world-model` and `--idm` given), the demo models are trained
first (`flywheel run preset=demo data_dir=DIR`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPLITS = ("in_distribution", "new_tasks", "ood_objects")
ANCHOR = {"n1": 0.30, "n8": 0.45, "ratio": 1.5}


def key(r: dict) -> tuple:
    return r.get("policy", "imagine_then_act"), r["n"], r["split"], r["index"]


def load_done(path: Path, models: dict[str, int], overrides: list[str] | None = None) -> list[dict]:
    """Rows already in the results file for these model versions (and these config overrides)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept, seen = [], set()
    for r in rows:  # the first row of each (policy, N, split, index): merged shard files may overlap
        if r.get("models") == models and r.get("overrides", []) == (overrides or []) and key(r) not in seen:
            seen.add(key(r))
            kept.append(r)
    return kept


def parse_shard(text: str | None) -> tuple[int, int]:
    """`K/M`: this process runs the item indices i with i % M == K (M processes split one curve between them,
    each with its own results file; merge the files to summarize). None: every index."""
    if text is None:
        return 0, 1
    try:
        k, m = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard must be K/M with integers, e.g. 0/2; got {text!r}") from None
    if m < 1 or not 0 <= k < m:
        raise SystemExit(f"--shard K/M needs M >= 1 and 0 <= K < M; got {text!r}")
    return k, m


def summarize(rows: list[dict], ns: list[int]) -> dict:
    """Per split and N: n, successes, rate, 95% Wilson CI, [successes, n] per family and, with a goal-conditioned
    planner, the median closest approach to the grasp goal (rad); pooled over splits; N=max / N=1 ratios."""
    import numpy as np

    from flywheel.evaluation.progress import summarize_progress
    from flywheel.evaluation.stats import wilson_interval

    def point(sel: list[dict]) -> dict:
        n, k = len(sel), sum(bool(r["success"]) for r in sel)
        lo, hi = wilson_interval(k, n)
        return {"n": n, "successes": k, "rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)],
                "holds": sum(bool(r["hold"]) for r in sel),
                "mean_plan_s": round(sum(r["plan_s"] for r in sel) / max(1, sum(r["plans"] for r in sel)), 3),
                "progress": summarize_progress([r.get("progress") for r in sel]),
                "by_family": {f: [sum(bool(r["success"]) for r in sel if r["family"] == f),
                                  sum(r["family"] == f for r in sel)] for f in sorted({r["family"] for r in sel})},
                **({"goal_gap_min_median": round(float(np.median(gaps)), 4)}
                   if (gaps := [r["goal_gap_min"] for r in sel if "goal_gap_min" in r]) else {}),
                **({"chosen_goal_guidance": chosen_guidance(sel)} if any(
                    "goal_guidance" in c for r in sel for p in r.get("plan_steps", []) for c in p["candidates"]) else {})}

    controls = sorted({key(r)[0] for r in rows} - {"imagine_then_act"})
    ctl = {c: {s: point([r for r in rows if key(r)[0] == c and r["split"] == s]) for s in SPLITS} for c in controls}
    rows = [r for r in rows if key(r)[0] == "imagine_then_act"]
    curve = {s: {str(n): point([r for r in rows if r["split"] == s and r["n"] == n]) for n in ns} for s in SPLITS}
    curve["pooled"] = {str(n): point([r for r in rows if r["n"] == n]) for n in ns}

    def ratio(split: str) -> float | None:
        if not ns:
            return None
        lo_rate, hi_rate = curve[split][str(min(ns))]["rate"], curve[split][str(max(ns))]["rate"]
        return None if not lo_rate or hi_rate is None else round(hi_rate / lo_rate, 3)

    name = f"ratio_n{max(ns)}_vs_n{min(ns)}" if ns else "ratio"
    out = {"curve": curve, name: {s: ratio(s) for s in (*SPLITS, "pooled")}, "controls": ctl}
    if len(ns) > 1:
        out[name + "_paired"] = {s: paired_ratio(rows, min(ns), max(ns), None if s == "pooled" else s)
                                 for s in (*SPLITS, "pooled")}
    return out


def chosen_guidance(rows: list[dict]) -> dict:
    """The goal guidance of the candidates the planner executed (`policy.goal_guidance_spread`): its mean and how
    often each value was chosen, over every plan of these episodes."""
    got = [c["goal_guidance"] for r in rows for p in r.get("plan_steps", []) for c in p["candidates"]
           if c.get("chosen") and "goal_guidance" in c]
    counts: dict[str, int] = {}
    for g in got:
        counts[f"{g:.3g}"] = counts.get(f"{g:.3g}", 0) + 1
    return {"plans": len(got), "mean": round(sum(got) / len(got), 4) if got else None,
            "counts": dict(sorted(counts.items(), key=lambda kv: float(kv[0])))}


def paired_ratio(rows: list[dict], lo: int, hi: int, split: str | None = None, reps: int = 2000,
                 seed: int = 0) -> dict | None:
    """N=hi against N=lo on the items both ran (same split and index: the same task, scene and planning seed):
    the success ratio and its 95% percentile-bootstrap interval over items (resampled in pairs), and the
    discordant pairs (items only N=hi solved, items only N=lo solved). None without common items."""
    import numpy as np

    got = {}
    for r in rows:
        if r["n"] in (lo, hi) and (split is None or r["split"] == split):
            got.setdefault((r["split"], r["index"]), {})[r["n"]] = bool(r["success"])
    pairs = np.array([(v[lo], v[hi]) for v in got.values() if lo in v and hi in v], dtype=float)
    if not len(pairs):
        return None
    a, b = pairs[:, 0], pairs[:, 1]
    idx = np.random.default_rng(seed).integers(0, len(pairs), (reps, len(pairs)))
    sa, sb = a[idx].sum(1), b[idx].sum(1)
    boot = sb[sa > 0] / sa[sa > 0]
    return {"items": len(pairs), "rate_lo": round(float(a.mean()), 4), "rate_hi": round(float(b.mean()), 4),
            "ratio": round(float(b.sum() / a.sum()), 3) if a.sum() else None,
            "ratio_ci95": [round(float(q), 3) for q in np.percentile(boot, [2.5, 97.5])] if len(boot) else None,
            "only_hi": int(((b == 1) & (a == 0)).sum()), "only_lo": int(((a == 1) & (b == 0)).sum())}


def champions(cfg, data_dir: Path, train: bool) -> tuple:
    """(store, registry, wm_reg, idm_reg) of the data dir; trains the demo models first if asked and absent."""
    from db.store import ExperienceStore
    from flywheel.registry import ModelRegistry

    store = ExperienceStore.from_config(cfg.db, data_dir, create=True)
    reg = ModelRegistry(store, data_dir)
    wm, idm = reg.alias("world_model"), reg.alias("idm")
    if (wm is None or idm is None) and train:
        store.close()
        print(f"no champions in {data_dir}: running flywheel run preset=demo", file=sys.stderr)
        subprocess.run([str(ROOT / ".venv/bin/flywheel"), "run", "preset=demo", f"data_dir={data_dir}"], check=True)
        return champions(cfg, data_dir, train=False)
    if wm is None or idm is None:
        raise SystemExit(f"no world_model/idm champion registered in {data_dir}")
    return store, reg, wm, idm


def run_episode(policy, backend, item, index: int, max_steps: int) -> dict:
    """One episode of the policy from the split item's scene; what the results file keeps of it."""
    from envs.errors import SafetyViolation
    from flywheel.evaluation.progress import EpisodeProgress

    obs = backend.reset(task=item.task(), seed=item.seed)
    progress = EpisodeProgress(backend.task)
    progress.update(backend.env)
    if hasattr(policy, "timings"):
        policy.seed = index  # imagine-then-act: the planning seed (controls are built with it)
    policy.reset(backend.task.to_dict(), item.instruction, backend.scene_description())
    steps, success, hold, reason, plans, plan_s = 0, False, False, None, [], 0.0
    while steps < max_steps:
        if hasattr(policy, "set_reference"):  # as workers do (workers/episode.py)
            policy.set_reference(backend.command_reference())
        out = policy.act(obs)
        plan_s += getattr(policy, "timings", {}).get("plan_s", 0.0)
        plans.append({"t": steps, "candidates": out.info.get("candidates", []),
                      **goal_gaps(getattr(policy, "goal", None), obs["proprio"], out.actions)})
        if out.hold or len(out.actions) == 0:
            hold, reason = True, out.failure_reason
            break
        try:
            res = backend.step(out.actions[: max_steps - steps])
        except SafetyViolation as exc:  # refused before it reached the robot: a failed episode (as workers do)
            reason = f"safety filter: {exc}"
            break
        steps += len(res.observations)
        progress.update(backend.env)
        success = bool(res.success)
        if res.observations:
            obs = res.observations[-1]
        if res.done or success or not res.observations:
            break
    gaps = [p["goal_gap"] for p in plans if "goal_gap" in p]
    return {"success": success, "length": steps, "hold": hold, "failure_reason": reason, "plans": len(plans),
            "plan_s": round(plan_s, 3), "plan_steps": plans, "progress": progress.as_dict(),
            **({"goal_gap_min": min(gaps)} if gaps else {})}


def goal_gaps(goal, proprio, actions) -> dict:
    """With a goal-conditioned planner (its `goal`, `envs.goals.task_goals`): how far the arms are from each task goal
    before a plan (`goal_gap`, `carry_gap`: mean absolute arm-joint gap, rad) and how far the plan's last target is
    (`target_gap`, `target_carry_gap`): whether the planner's targets head for the goals, and where they stop."""
    from policies.imagine_then_act import arm_gap

    if goal is None:
        return {}
    out = {name: round(arm_gap(proprio, row), 4) for name, row in zip(("goal_gap", "carry_gap"), goal)}
    if len(actions):
        out |= {name: round(arm_gap(actions[-1], row), 4) for name, row in zip(("target_gap", "target_carry_gap"), goal)}
    return out


NOISY_CONTROLS = {"noisy_joints": "independent", "biased_joints": "shared", "slow_joints": "undershoot",
                  "best_joints": "independent"}
TRUTH_SCALE = 0.05  # rad: best_joints' score is exp(-(mean arm error against the oracle's targets) / this)


def truth_scored(oracle, check):
    """`check` (the feasibility checker) with its score replaced by the candidate's closeness to the oracle's own
    arm targets for the same chunk (`oracle.last_actions`): a perfect score, for the `best_joints` control."""
    import dataclasses

    import numpy as np

    def score(actions, q0=None):
        rep = check(actions, q0)
        a = np.asarray(actions, np.float64)
        truth = np.asarray(oracle.last_actions, np.float64)[: len(a)]
        err = float(np.abs(a[: len(truth), :14] - truth[:, :14]).mean())
        return dataclasses.replace(rep, score=float(np.exp(-err / TRUTH_SCALE)))

    return score
ORACLE_CONTROLS = ("oracle_wm", "oracle_actions", "oracle_grips", "oracle_arms", "oracle_joints")


def noisy_control(name: str) -> tuple[float, int]:
    """(error, candidates) of a `noisy_joints`, `biased_joints`, `slow_joints` or `best_joints` control, NAME:E[:N]."""
    parts = name.split(":")
    try:
        err, n = float(parts[1]), int(parts[2]) if len(parts) > 2 else 1
    except (IndexError, ValueError):
        raise SystemExit(f"bad control {name!r}: use {'|'.join(NOISY_CONTROLS)}:ERROR[:N]") from None
    if not (err >= 0 and n >= 1) or len(parts) > 3:
        raise SystemExit(f"bad control {name!r}: ERROR must be >= 0 and N >= 1")
    return err, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--ns", default="1,2,4,8", help='candidate counts ("none": controls only)')
    ap.add_argument("--controls", default="random,scripted_expert,oracle_wm",
                    help="model-free policies run on the same items as references (\"none\" to skip)")
    ap.add_argument("--in-dist", type=int, default=100, help="episodes per point on in_distribution")
    ap.add_argument("--other", type=int, default=40, help="episodes per point on new_tasks and ood_objects")
    ap.add_argument("--results", default=None, help="JSONL of finished episodes (default DATA_DIR/bench_ttc.jsonl)")
    ap.add_argument("--summary-only", action="store_true", help="summarize the results file, run nothing")
    ap.add_argument("--no-train", action="store_true", help="fail instead of training demo models when absent")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard", default=None, help="K/M: run only the item indices i with i %% M == K")
    ap.add_argument("--idm", default=None, help="an IDM checkpoint dir to use instead of DATA_DIR's champion")
    ap.add_argument("--world-model", default=None, help="a world-model checkpoint dir instead of the champion")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the demo preset, e.g. policy.horizon=2")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from envs.backend import make_backend
    from envs.splits import ci_subset
    from flywheel.compose import compose, to_object
    from flywheel.evaluation.feasibility import default_checker
    from flywheel.evaluation.oracle import (
        ExpertOracleWorldModel,
        NoisyOracleJoints,
        OracleActions,
        OracleGrips,
        OracleJoints,
    )
    from policies.base import make_policy
    from policies.idm import InverseDynamicsModel
    from policies.imagine_then_act import ImagineThenActPolicy
    from policies.world_model import WorldModel

    data_dir = Path(args.data_dir).resolve()
    ns = [] if args.ns == "none" else sorted(int(x) for x in args.ns.split(","))
    shard_k, shard_m = parse_shard(args.shard)
    controls = [] if args.controls == "none" else args.controls.split(",")
    cfg = to_object(compose(["preset=demo", f"data_dir={data_dir}", *args.overrides]))
    if args.world_model and args.idm:  # both given: the data dir only holds the results
        store, wm_reg, idm_reg = None, None, None
    else:
        store, _, wm_reg, idm_reg = champions(cfg, data_dir, train=not args.no_train)
    models = {"world_model": args.world_model or wm_reg.version, "idm": args.idm or idm_reg.version}
    results = Path(args.results) if args.results else data_dir / "bench_ttc.jsonl"
    if not args.summary_only:  # a data dir that only holds the results may not exist yet
        results.parent.mkdir(parents=True, exist_ok=True)
    rows = load_done(results, models, args.overrides)
    counts = {"in_distribution": args.in_dist, "new_tasks": args.other, "ood_objects": args.other}
    t_start = time.perf_counter()
    ran = 0
    if not args.summary_only:
        done = {key(r) for r in rows}
        items = {s: ci_subset(s, counts[s]) for s in SPLITS}
        # (controls alone need no world model)
        wm = WorldModel.from_pretrained(args.world_model or wm_reg.path) if ns else None
        idm = InverseDynamicsModel.from_pretrained(args.idm or idm_reg.path)
        backend = make_backend("sim", cfg.backend, cfg.env)

        def planner(world_model, extractor, feasibility=None) -> ImagineThenActPolicy:
            return ImagineThenActPolicy(cfg, world_model=world_model, idm=extractor,
                                        feasibility=feasibility or default_checker(1 / cfg.env.control_hz).check,
                                        action_low=backend.action_low, action_high=backend.action_high,
                                        workspace=backend.safety.workspace)

        policy = planner(wm, idm) if ns else None
        oracle, oracles = None, {}
        noisy = {c: noisy_control(c) for c in controls if c.split(":")[0] in NOISY_CONTROLS}
        if set(ORACLE_CONTROLS) & set(controls) or noisy:  # a shadow env only when asked for
            oracle = ExpertOracleWorldModel(cfg.env, backend.get_state, make_expert=None)
            oracles = {"oracle_wm": planner(oracle, idm), "oracle_actions": planner(oracle, OracleActions(oracle)),
                       "oracle_grips": planner(oracle, OracleGrips(oracle, idm, take="grips")),
                       "oracle_arms": planner(oracle, OracleGrips(oracle, idm, take="arms")),
                       "oracle_joints": planner(oracle, OracleJoints(oracle, idm)),
                       **{c: planner(oracle, NoisyOracleJoints(oracle, idm, err, cfg.policy.horizon,
                                                               mode=NOISY_CONTROLS[c.split(":")[0]]),
                                     truth_scored(oracle, default_checker(1 / cfg.env.control_hz).check)
                                     if c.startswith("best_joints:") else None)
                          for c, (err, _) in noisy.items()}}
        with results.open("a") as f:
            for index in range(shard_k, max(counts.values()), shard_m):
                for split in SPLITS:
                    for name, n in [(c, 0) for c in controls] + [("imagine_then_act", n) for n in ns]:
                        if index >= len(items[split]) or (name, n, split, index) in done:
                            continue
                        if name == "imagine_then_act":
                            policy.pcfg.n_candidates = n
                            actor = policy
                        elif name in oracles:
                            actor = oracles[name]
                            actor.pcfg.n_candidates = noisy[name][1] if name in noisy else 1
                            if name in noisy:
                                actor.idm.episode_seed = index
                            oracle.make_expert = lambda env, i=index: make_policy("scripted_expert", cfg, env=env, seed=i)
                        else:
                            actor = make_policy(name, cfg, env=backend.env, state_fn=backend.get_state, seed=index,
                                                action_low=backend.action_low, action_high=backend.action_high,
                                                chunk=cfg.policy.horizon)
                        t0 = time.perf_counter()
                        item = items[split][index]
                        row = {"policy": name, "n": n, "split": split, "index": index, "seed": item.seed,
                               "family": item.family, "models": models,
                               **({"overrides": args.overrides} if args.overrides else {}),
                               **run_episode(actor, backend, item, index, cfg.env.max_steps), "wall_s": 0.0}
                        row["wall_s"] = round(time.perf_counter() - t0, 2)
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                        rows.append(row)
                        ran += 1
        if oracle is not None:
            oracle.close()
        backend.close()
    if store is not None:
        store.close()
    print(json.dumps({
        "bench": "ttc",
        "data_dir": str(data_dir),
        "models": models,
        "overrides": args.overrides,
        "results": str(results),
        "episodes_planned_per_point": counts,
        "episodes_run_now": ran,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "policy": {"horizon": cfg.policy.horizon, "sampling_steps": cfg.policy.sampling_steps,
                   "imagine_frames": cfg.policy.imagine_frames, "max_steps": cfg.env.max_steps},
        "anchor": ANCHOR,
        **summarize(rows, ns),
    }))


if __name__ == "__main__":
    main()
