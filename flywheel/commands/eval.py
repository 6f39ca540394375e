"""`flywheel eval ...`: evaluations that are not part of the loop. `world-model-ranking` predicts each
policy checkpoint's success with the champion world model (no robot) and compares it with real sim
success from the same initial states (see `flywheel.evaluation.wm_evaluator`)."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="offline evaluations (world model as policy evaluator)")
    esub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    r = esub.add_parser(
        "world-model-ranking", help="predicted (world model) vs real (sim) success of policy checkpoints",
        description="Roll each policy inside the champion world model from curated initial states, run it for "
        "real in sim from the same states, and report Pearson r and pairwise ranking accuracy (true gap >= 15 "
        "points). Writes wm_ranking.{md,json,png} into data_dir/reports/.")
    r.add_argument("--policies", nargs="+", default=None, metavar="SPEC",
                   help="policy checkpoints: expert@NOISE, play, random, imagine_then_act[@WM:IDM] "
                   "(default: expert at several noise levels, play, random, imagine_then_act)")
    r.add_argument("--states", type=int, default=8, help="number of initial states (default 8)")
    r.add_argument("--source", choices=["split", "store"], default="split",
                   help="initial states: a split's CI subset, or recorded failure states from the store")
    r.add_argument("--split", default="in_distribution", help="split for --source split")
    r.add_argument("--world-model", default="champion", help="world model alias or version (default champion)")
    r.add_argument("--steps", type=int, default=None,
                   help="diffusion sampling steps per prediction (default: the world model's predict_steps)")
    r.add_argument("--horizon", type=int, default=None, help="actions per episode (default env.max_steps)")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("--quiet", action="store_true", help="no per-state progress")
    r.set_defaults(func=world_model_ranking)
    p.set_defaults(func=lambda args, cfg: (p.print_help(), 2)[1])


def world_model_ranking(args: argparse.Namespace, dcfg: Any) -> int:
    from omegaconf import OmegaConf

    from db.store import ExperienceStore
    from flywheel.errors import FlywheelError
    from flywheel.evaluation import wm_evaluator as wme
    from flywheel.hooks import load_checked
    from flywheel.registry import ModelRegistry

    cfg = OmegaConf.to_object(dcfg)
    data = cfg.data_path
    if not (data / "store.sqlite").exists() and cfg.db.url is None:
        raise FlywheelError(f"no experience store in {data}; run `flywheel run data_dir={data}` first")
    if args.states < 1:
        raise FlywheelError(f"--states must be >= 1, got {args.states}")
    store = ExperienceStore.from_config(cfg.db, data)
    registry = ModelRegistry(store, data)
    wm_ref = registry.resolve("world_model", args.world_model)
    if wm_ref is None:
        raise FlywheelError(f"no world model {args.world_model!r} registered in {data}; run `flywheel run` first")
    wm = load_checked("world_model", wm_ref.path).eval()
    has_models = registry.alias("idm") is not None
    specs = [wme.PolicySpec.parse(s) for s in args.policies] if args.policies else wme.default_specs(has_models)
    if args.source == "store":
        states = wme.states_from_store(store, args.states)
        if not states:
            raise FlywheelError("no failed rollouts with a recorded state in the store; use --source split")
    else:
        states = wme.states_from_split(cfg.env, args.split, args.states)
    say = (lambda m: None) if args.quiet or args.json else (lambda m: print(f"[eval] {m}", flush=True))
    say(f"world model v{wm_ref.version}; {len(specs)} policies x {len(states)} states ({args.source})")
    t0 = time.monotonic()
    results, ranking = wme.evaluate_policies(cfg, wm, specs, states, registry=registry, steps=args.steps,
                                             seed=cfg.seed, horizon=args.horizon, progress=say)
    meta = {"world_model_version": wm_ref.version, "states": [s.key for s in states], "source": args.source,
            "sampling_steps": args.steps or wm.cfg.predict_steps, "wall_s": time.monotonic() - t0}
    paths = wme.write_ranking_report(results, ranking, data / "reports", meta)
    if args.json:
        print(json.dumps(json.loads(paths["json"].read_text())))
    else:
        print(paths["markdown"].read_text())
        print(f"Pearson r: {wme.fmt_number(ranking.pearson_r)}  pairwise accuracy: {wme.fmt_number(ranking.pairwise_accuracy)} "
              f"({ranking.pairs} pairs with true gap >= {ranking.min_gap:.0%})")
        print(f"table: {paths['markdown']}\nplot:  {paths['plot']}\njson:  {paths['json']}")
    return 0
