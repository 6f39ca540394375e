"""Which candidate score predicts real success? AUROC of each score against the executed outcome.

A sample is one *executed* candidate: the chosen candidate of one planning step, labelled with whether
its episode then succeeded. Rejected and unchosen candidates were never executed, so they have no outcome
and are left out. Samples come from the imagine-then-act rollout episodes of a data dir's store
(`store.candidates(episode_id)`) and, with `--ttc-results`, from the JSONL of bench/bench_ttc.py.
Scores: the world model's success head, kinematic feasibility, IDM spread (negated: low spread should
mean success), consensus, goal progress (a goal-conditioned planner's), the recorded combined score, and a few candidate weightings recomputed from the raw
scores (to pick `DEFAULT_WEIGHTS` in policies/imagine_then_act.py). AUROC is the Mann-Whitney statistic
(ties count half) with a 95% bootstrap interval resampled by episode (steps of one episode are not
independent). Baseline: AUROC 0.5 (a score that knows nothing). Prints one JSON object.

    .venv/bin/python bench/bench_scores.py --data-dir DIR [--ttc-results DIR/bench_ttc.jsonl] [--skip-store]
        [--first-step-only]

Also reported ("choice"): over planning steps with several acceptable candidates, how much each score
varies between them and how often the executed choice is that score's own best, i.e. which score
actually decides the choice under the current weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# weightings compared for the default (keys: raw score names; spread enters with its sign here)
WEIGHTINGS = {
    "success_only": {"success": 1.0},
    "feasibility_only": {"feasibility": 1.0},
    "spread_only": {"idm_spread": -1.0},
    "consensus_only": {"consensus": 1.0},
    "goal_progress_only": {"goal_progress": 1.0},
    "feasibility+goal_progress": {"feasibility": 0.5, "goal_progress": 1.0},
    "success+feasibility": {"success": 1.0, "feasibility": 0.5},
    "success-spread": {"success": 1.0, "idm_spread": -0.5},
    "success+feasibility-spread (previous default)": {"success": 1.0, "feasibility": 0.5, "idm_spread": -0.5},
}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """P(score of a random success > score of a random failure), ties half; None without both classes."""
    from scipy.stats import rankdata

    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, reps: int = 1000,
                 seed: int = 0) -> list[float] | None:
    """95% percentile interval of the AUROC, resampling whole episodes."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    idx_of = {g: np.flatnonzero(groups == g) for g in uniq}
    vals = []
    for _ in range(reps):
        pick = np.concatenate([idx_of[g] for g in rng.choice(uniq, size=len(uniq))])
        a = auroc(scores[pick], labels[pick])
        if a is not None:
            vals.append(a)
    if len(vals) < reps // 2:
        return None
    return [round(float(np.percentile(vals, 2.5)), 3), round(float(np.percentile(vals, 97.5)), 3)]


def from_store(data_dir: Path, steps: list[list[dict]]) -> list[dict]:
    """Executed candidates of the store's imagine-then-act rollouts: dict(scores, success, episode).
    Every planning step's candidates (as dicts with scores, chosen, rejected_reason) go to `steps`."""
    from db.store import ExperienceStore
    from flywheel.compose import compose, to_object

    cfg = to_object(compose([f"data_dir={data_dir}"]))
    store = ExperienceStore.from_config(cfg.db, data_dir)
    out = []
    try:
        for ep in store.episodes(policy="imagine_then_act", limit=None):
            cands = store.candidates(ep.id)
            for p in sorted({c.plan_step for c in cands}):
                steps.append([c.to_dict() for c in cands if c.plan_step == p])
            for c in cands:
                if c.chosen:
                    out.append({"scores": c.scores, "success": bool(ep.success), "episode": f"store:{ep.id}",
                                "step": c.plan_step})
    finally:
        store.close()
    return out


def from_ttc(path: Path, steps: list[list[dict]]) -> list[dict]:
    """Executed candidates recorded by bench/bench_ttc.py (every step's candidates go to `steps`)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        for step, plan in enumerate(r.get("plan_steps", [])):
            steps.append(plan["candidates"])
            for c in plan["candidates"]:
                if c["chosen"]:
                    out.append({"scores": c["scores"], "success": bool(r["success"]), "step": step,
                                "episode": f"ttc:{r['n']}:{r['split']}:{r['index']}"})
    return out


def choice_analysis(steps: list[list[dict]]) -> dict:
    """Over planning steps with >= 2 acceptable candidates: how much each score varies between them
    (mean within-step std) and how often the executed choice is that score's own best."""
    keys = {"success_head": ("success", 1), "feasibility": ("feasibility", 1), "neg_idm_spread": ("idm_spread", -1),
            "consensus": ("consensus", 1), "goal_progress": ("goal_progress", 1)}
    multi = [[c for c in st if c.get("rejected_reason") is None] for st in steps]
    multi = [st for st in multi if len(st) >= 2 and any(c["chosen"] for c in st)]
    out: dict = {"steps_with_a_choice": len(multi)}
    for name, (key, sign) in keys.items():
        stds, agree = [], 0
        for st in multi:
            vals = np.array([sign * (c["scores"].get(key) if c["scores"].get(key) is not None else np.nan) for c in st])
            if not np.isfinite(vals).all():
                continue
            stds.append(float(vals.std()))
            chosen = next(i for i, c in enumerate(st) if c["chosen"])
            agree += bool(vals[chosen] >= vals.max() - 1e-12)
        out[name] = {"mean_within_step_std": round(float(np.mean(stds)), 4) if stds else None,
                     "choice_is_its_best": round(agree / len(stds), 3) if stds else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--ttc-results", default=None, help="also use bench_ttc.py's JSONL")
    ap.add_argument("--first-step-only", action="store_true", help="one sample per episode: its first plan")
    ap.add_argument("--skip-store", action="store_true", help="only the bench_ttc.py results")
    args = ap.parse_args()
    data_dir = Path(args.data_dir).resolve()
    steps: list[list[dict]] = []
    samples = [] if args.skip_store else from_store(data_dir, steps)
    n_store = len(samples)
    if args.ttc_results:
        samples += from_ttc(Path(args.ttc_results), steps)
    if args.first_step_only:
        samples = [s for s in samples if s["step"] == 0]
    labels = np.array([s["success"] for s in samples], bool)
    groups = np.array([s["episode"] for s in samples])

    def raw(name: str) -> np.ndarray:
        v = [s["scores"].get(name) for s in samples]
        return np.array([np.nan if x is None else float(x) for x in v])

    columns = {"success": raw("success"), "feasibility": raw("feasibility"), "idm_spread": raw("idm_spread"),
               "consensus": raw("consensus"),  # consensus: NaN in records from before it existed
               "goal_progress": raw("goal_progress")}  # only with a goal-conditioned world model
    result: dict[str, dict] = {}

    def report(name: str, values: np.ndarray) -> None:
        ok = np.isfinite(values)
        a = auroc(values[ok], labels[ok])
        result[name] = {"auroc": None if a is None else round(a, 3), "n": int(ok.sum()),
                        "ci95": bootstrap_ci(values[ok], labels[ok], groups[ok]) if a is not None else None}

    report("success_head", columns["success"])
    report("feasibility", columns["feasibility"])
    report("neg_idm_spread", -columns["idm_spread"])
    report("consensus", columns["consensus"])
    report("goal_progress", columns["goal_progress"])
    report("combined_as_recorded", raw("combined"))
    weighted = {}
    for name, w in WEIGHTINGS.items():
        vals = sum(wt * np.nan_to_num(columns[k], nan=0.0) for k, wt in w.items())
        report(f"weights:{name}", vals)
        weighted[name] = result[f"weights:{name}"]["auroc"]
    scored = {k: v for k, v in weighted.items() if v is not None}
    print(json.dumps({
        "bench": "scores",
        "data_dir": str(data_dir),
        "samples": len(samples),
        "from_store": n_store,
        "episodes": len(set(groups.tolist())),
        "successes": int(labels.sum()),
        "episode_success_rate": round(float(np.mean([s["success"] for s in samples])), 3) if samples else None,
        "baseline_auroc": 0.5,
        "scores": result,
        "best_weighting": max(scored, key=scored.get) if scored else None,
        "choice": choice_analysis(steps),
        "weightings": WEIGHTINGS,
    }))


if __name__ == "__main__":
    main()
