"""Dispatch throughput: no-op tasks through the product's enqueue path (TaskSpec validation, ledger row
written first, worker claims and finishes the run) vs plain Celery `delay` of a no-op task on the same
broker and the same worker, for Redis, RabbitMQ and the embedded SQLite broker.

    .venv/bin/python bench/bench_dispatch.py [--n 600] [--rounds 6] [--brokers redis,rabbitmq,embedded]

Each figure is end to end: from the first enqueue until every task has run (ledger states for the
product; Celery results for the baseline), summed over `rounds` blocks of n / rounds tasks that
alternate between the two paths (ABBA), so both see the same load on a shared machine. Prints one
JSON object; `ratio` = product / plain Celery throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

BROKERS = {
    "redis": ("redis://127.0.0.1:6379/12", "redis://127.0.0.1:6379/13"),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", "rpc://"),
    "embedded": (None, "db+sqlite:///{data}/results.sqlite"),
}


def bench_broker(name: str, n: int, root: Path, rounds: int = 6) -> dict:
    from flywheel.compose import compose
    from workers.pool import WorkerPool

    url, result = BROKERS[name]
    data = root / name
    prefix = f"b{uuid.uuid4().hex[:6]}."
    overrides = [f"data_dir={data}", f"broker.queue_prefix={prefix}",
                 f"broker.result_url={result.format(data=data)}"]
    if url:
        overrides.append(f"broker.url={url}")
    cfg = compose(overrides)
    with WorkerPool(cfg, n=1, queues=["sim"], sweeper=False) as pool:
        sched, app = pool.scheduler, pool.scheduler.app
        ping = app.tasks["flywheel.ping"]
        q = prefix + "sim"
        # warm up both paths
        sched.wait(sched.enqueue({"kind": "noop", "attempts": 5}), timeout=120)
        [r.get(timeout=120) for r in [ping.apply_async(queue=q) for _ in range(5)]]

        def plain(k: int) -> float:
            t0 = time.perf_counter()
            results = [ping.apply_async(queue=q) for _ in range(k)]  # what `delay` does, on our queue
            for r in results:
                r.get(timeout=600)
            return time.perf_counter() - t0

        def product(k: int) -> float:
            t0 = time.perf_counter()
            ids = sched.enqueue({"kind": "noop", "attempts": k})
            rows = sched.wait(ids, timeout=600, poll_s=0.01)  # Celery's own get() is notified by pub/sub
            assert all(r.state == "succeeded" for r in rows)
            return time.perf_counter() - t0

        # interleaved blocks, ABBA order, so both paths see the same machine load (it is shared)
        block = max(n // rounds, 1)
        plain_s = product_s = 0.0
        for i in range(rounds):
            if i % 2 == 0:
                plain_s += plain(block)
                product_s += product(block)
            else:
                product_s += product(block)
                plain_s += plain(block)
        n = block * rounds
    if url and url.startswith("redis"):
        import redis

        for db_url in (url, result):
            r = redis.Redis.from_url(db_url)
            for key in r.scan_iter(match=f"*{prefix}*"):
                r.delete(key)
    return {"plain_celery_tasks_per_s": round(n / plain_s, 1), "product_tasks_per_s": round(n / product_s, 1),
            "ratio": round(plain_s / product_s, 3), "tasks_per_path": n, "rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="tasks per path, split into --rounds interleaved blocks")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--brokers", default="redis,rabbitmq,embedded")
    args = ap.parse_args()
    out: dict = {"bench": "dispatch", "n_tasks": args.n, "workers": 1, "store": "sqlite (embedded)"}
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        for name in args.brokers.split(","):
            out[name] = bench_broker(name, args.n, Path(tmp), args.rounds)
    out["ratio_redis"] = out.get("redis", {}).get("ratio")
    out["target_ratio_redis"] = 0.8
    print(json.dumps(out))


if __name__ == "__main__":
    main()
