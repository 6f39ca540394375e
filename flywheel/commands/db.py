"""Experience-store commands: `flywheel db upgrade|stats|recaption`, `flywheel episodes`, `flywheel episode ID`.

All but `db upgrade` and `db recaption` are read-only. Tables by default (rich), `--json` for scripts. Errors (bad URL,
unreachable database, wrong schema revision, unknown id) are StoreError: one line, exit 1.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from flywheel.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `db`, `episodes` and `episode`."""
    p_db = sub.add_parser("db", help="experience store: upgrade the schema, show stats, recaption episodes")
    db_sub = p_db.add_subparsers(dest="db_command", metavar="SUBCOMMAND")
    p_db.set_defaults(func=lambda args, cfg: _usage(p_db))
    p_up = db_sub.add_parser("upgrade", help="create the store or migrate it to the current schema")
    p_up.set_defaults(func=cmd_upgrade)
    p_stats = db_sub.add_parser("stats", help="counts and success rates by task x model version x backend")
    p_stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p_stats.set_defaults(func=cmd_stats)
    p_cap = db_sub.add_parser(
        "recaption", help="caption every episode again with policy.caption_upsampler, from its recorded start")
    p_cap.add_argument("--json", action="store_true", help="print JSON instead of a line")
    p_cap.set_defaults(func=cmd_recaption)

    p_eps = sub.add_parser("episodes", help="list recorded episodes (newest first)")
    p_eps.add_argument("--task", help="task family (pick, place, push, drawer, tissue, handover)")
    outcome = p_eps.add_mutually_exclusive_group()
    outcome.add_argument("--success", dest="success", action="store_const", const=True, help="only successes")
    outcome.add_argument("--failure", dest="success", action="store_const", const=False, help="only failures")
    p_eps.add_argument("--model", help="world-model version number, or an alias such as champion")
    p_eps.add_argument("--backend", help="backend name (sim, neo:<robot_id>)")
    p_eps.add_argument("--split", help="evaluation split (in_distribution, new_tasks, ood_objects)")
    p_eps.add_argument("--source", choices=["expert", "play", "rollout"], help="where the episode came from")
    p_eps.add_argument("--limit", type=int, default=20, help="at most this many rows (default 20)")
    p_eps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_eps.set_defaults(func=cmd_episodes)

    p_ep = sub.add_parser("episode", help="one episode's metadata and where its arrays are")
    p_ep.add_argument("id", type=int, help="episode id")
    p_ep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_ep.set_defaults(func=cmd_episode)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _config(cfg: Any):
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)


def _open_store(cfg: Any):
    from db.store import ExperienceStore

    conf = _config(cfg)
    return ExperienceStore.from_config(conf.db, conf.data_path)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console().print(table)


def cmd_upgrade(args: argparse.Namespace, cfg: Any) -> int:
    """Create the store if needed and migrate it to the head revision."""
    from db.engine import safe_url
    from db.schema import head_revision, upgrade
    from db.store import resolve_urls

    conf = _config(cfg)
    url, _ = resolve_urls(conf.db, conf.data_path)
    if conf.db.url is None:
        conf.data_path.mkdir(parents=True, exist_ok=True)
    rev = upgrade(url)
    print(f"store {safe_url(url)} is at revision {rev} (head {head_revision()})")
    return 0


def cmd_stats(args: argparse.Namespace, cfg: Any) -> int:
    """Row counts, and success rates by task x world-model version x backend."""
    from db.engine import safe_url

    with _open_store(cfg) as store:
        counts, rates = store.counts(), store.success_rate()
        where = safe_url(store.engine.url)
    if args.json:
        _print_json({"store": where, "counts": counts, "success_rates": [r.to_dict() for r in rates]})
        return 0
    _table(f"experience store {where}", ["table", "rows"], [[k, v] for k, v in counts.items()])
    _table(
        "success rate by task x world-model version x backend",
        ["task", "world model", "backend", "episodes", "successes", "rate"],
        [[r.task_family, _version(r.world_model_version), r.backend, r.n, r.successes, f"{r.rate:.3f}"] for r in rates],
    )
    return 0


def cmd_recaption(args: argparse.Namespace, cfg: Any) -> int:
    """Caption every episode again with the configured upsampler (`policy.caption_upsampler`), from the scene
    at its recorded start, so a world model trained on the store reads the captions the planner will give it.
    Run it with the workers stopped (or restarted on the new upsampler): episodes recorded meanwhile keep theirs."""
    from flywheel.data import recaption
    from policies.captions import make_upsampler
    from workers.episode import drop_backend, get_backend

    conf = _config(cfg)
    upsampler = make_upsampler(conf.policy.caption_upsampler, conf.policy.upsampler_url, conf.policy.upsampler_model)
    try:
        with _open_store(cfg) as store:
            counts = recaption(store, get_backend(conf, "sim"), upsampler)
    finally:
        drop_backend("sim")
    if args.json:
        _print_json({"upsampler": conf.policy.caption_upsampler, **counts})
    else:
        print(f"captioned {counts['captioned']} of {counts['episodes']} episodes with the "
              f"{conf.policy.caption_upsampler!r} upsampler: {counts['changed']} changed, {counts['skipped']} "
              "skipped (no recorded initial state)")
    return 0


def _version(v: int | None) -> str:
    return "-" if v is None else f"v{v}"


def _model_filter(store: Any, model: str | None) -> int | None:
    if model is None:
        return None
    if model.lstrip("v").isdigit():
        return int(model.lstrip("v"))
    found = store.get_alias("world_model", model)
    if found is None:
        raise ConfigError(f"--model {model!r} is neither a world-model version number nor a world_model alias")
    return found.version


def cmd_episodes(args: argparse.Namespace, cfg: Any) -> int:
    """List episodes matching the filters."""
    if args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    with _open_store(cfg) as store:
        rows = store.episodes(
            task=args.task, success=args.success, world_model_version=_model_filter(store, args.model),
            backend=args.backend, split=args.split, source=args.source, limit=args.limit,
        )
    if args.json:
        _print_json([r.to_dict() for r in rows])
        return 0
    _table(
        f"{len(rows)} episodes",
        ["id", "created", "source", "task", "backend", "policy", "world model", "split", "success", "reward", "T"],
        [[r.id, r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.source, r.task_family, r.backend, r.policy,
          _version(r.world_model_version), r.split, r.success, f"{r.reward:.2f}", r.length] for r in rows],
    )
    return 0


def cmd_episode(args: argparse.Namespace, cfg: Any) -> int:
    """One episode's metadata and the locations of its arrays."""
    with _open_store(cfg) as store:
        ep = store.get_episode(args.id)
        info = ep.to_dict()
        info["arrays_location"] = store.artifacts.location(ep.artifact_uri) if ep.artifact_uri else None
        info["initial_state_location"] = (
            store.artifacts.location(ep.initial_state_uri) if ep.initial_state_uri else None
        )
        info["candidates"] = len(store.candidates(ep.id))
    if args.json:
        _print_json(info)
        return 0
    _table(f"episode {ep.id}", ["field", "value"],
           [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in info.items()])
    return 0
