"""Worker and scheduler commands: `flywheel worker`, `flywheel enqueue`, `flywheel status`, `flywheel cancel`.

    flywheel worker --queues sim,eval -n 2          # or: flywheel worker broker.queues=[sim] broker=redis
    flywheel enqueue --family pick --policy scripted_expert --attempts 4 --wait 300
    flywheel status 12 13            # one JSON row per run; no ids: counts by state and the latest runs
    flywheel cancel 12

Output is JSON (one object) for scripts. Bad specs, unknown ids and broker errors are WorkerError:
one line, exit 1.
"""
from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `worker`, `enqueue`, `status` and `cancel`."""
    p = sub.add_parser("worker", help="start worker processes (and the stale-task sweeper) until stopped")
    p.add_argument("--queues", help="comma-separated queues: sim, train, eval, neo.<robot_id> (default broker.queues)")
    p.add_argument("-n", "--processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--concurrency", type=int, help="pool processes per worker (default broker.concurrency)")
    p.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    p.add_argument("--no-sweeper", action="store_true", help="do not run the sweeper in this process")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="validate a task spec, write the ledger and send the task")
    p.add_argument("--spec", help="the whole TaskSpec as JSON, or @file.json (other flags add to it)")
    p.add_argument("--kind", choices=["episode", "retrain", "evaluate", "promote", "noop"])
    p.add_argument("--instruction")
    p.add_argument("--family")
    p.add_argument("--split")
    p.add_argument("--split-index", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--backend", help="sim or neo:<robot_id>")
    p.add_argument("--policy", help="scripted_expert, random, imagine_then_act (default policy.name)")
    p.add_argument("--model", help="alias or version, optionally kind-prefixed: champion, 3, idm:champion")
    p.add_argument("--attempts", type=int)
    p.add_argument("--priority", type=int, help="0..9, 9 most urgent")
    p.add_argument("--deadline", help="ISO 8601 time after which the run is not started")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--tag", action="append", dest="tags", help="a tag (repeatable)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the runs to finish")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("status", help="state of task runs in the ledger")
    p.add_argument("run_ids", nargs="*", type=int, help="run ids (none: a summary)")
    p.add_argument("--rejects", action="store_true", help="also list the latest rejected messages")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel queued or running task runs")
    p.add_argument("run_ids", nargs="+", type=int)
    p.set_defaults(func=cmd_cancel)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from workers.errors import WorkerError

    spec: dict[str, Any] = {}
    if args.spec:
        text = Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise WorkerError(f"--spec is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise WorkerError("--spec must be a JSON object")
    for name in ("kind", "instruction", "family", "split", "split_index", "seed", "backend", "policy", "model",
                 "attempts", "priority", "deadline", "max_steps", "tags"):
        value = getattr(args, name)
        if value is not None:
            spec[name] = value
    return spec


def cmd_enqueue(args: argparse.Namespace, cfg: Any) -> int:
    from workers.client import Scheduler

    sched = Scheduler(cfg)
    run_ids = sched.enqueue(_spec_from_args(args))
    out: dict[str, Any] = {"run_ids": run_ids}
    if args.wait is not None:
        rows = sched.wait(run_ids, timeout=args.wait)
        out["runs"] = [{"id": r.id, "state": r.state, "error": r.error, "result": r.result} for r in rows]
    _print(out)
    return 0


def cmd_status(args: argparse.Namespace, cfg: Any) -> int:
    from collections import Counter

    from workers.client import Scheduler

    sched = Scheduler(cfg)
    if args.run_ids:
        out: dict[str, Any] = {"runs": [sched.status(r).to_dict() for r in args.run_ids]}
    else:
        runs = sched.store.task_runs(limit=1000)
        out = {"states": dict(Counter(r.state for r in runs)),
               "latest": [{"id": r.id, "name": r.name, "state": r.state, "queue": r.queue, "attempts": r.attempts,
                           "error": r.error} for r in runs[:20]]}
    if args.rejects:
        from workers.rejects import read_rejects

        out["rejects"] = read_rejects(sched.cfg.data_path)
    _print(out)
    return 0


def cmd_cancel(args: argparse.Namespace, cfg: Any) -> int:
    from workers.client import Scheduler

    sched = Scheduler(cfg)
    _print({"cancelled": {str(r): sched.cancel(r) for r in args.run_ids}})
    return 0


def cmd_worker(args: argparse.Namespace, cfg: Any) -> int:
    from workers.pool import WorkerPool

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    pool = WorkerPool(cfg, n=args.processes, queues=queues, sweeper=not args.no_sweeper,
                      concurrency=args.concurrency, loglevel=args.loglevel)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with pool:
        print(f"flywheel: {args.processes} worker(s) on {', '.join(pool.queues)}; logs in {pool.log_dir}; "
              "Ctrl-C stops them", flush=True)
        while not stop.wait(1.0):
            for i, proc in enumerate(pool.procs):
                if proc.poll() is not None:
                    print(f"flywheel: worker {i} exited with {proc.returncode}; restarting it", flush=True)
                    pool.start_worker(i)
    return 0
