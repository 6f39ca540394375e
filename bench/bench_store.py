"""Experience-store benchmark: prints ONE JSON object.

1. Episode insert throughput through the store API (`record_episodes_bulk`, metadata-only rows,
   which also maintains the success-rate rollup) vs raw SQLAlchemy Core bulk insert of the same rows
   into the same table, interleaved batch by batch (`ratio` = store / raw; target >= 0.8).
2. Success rate by task x world-model version x backend over `--n` synthetic episodes (default
   1,000,000): median of several runs after warm-up (targets: <= 100 ms PostgreSQL, <= 300 ms SQLite).
   The store answers it from `episode_rollups`, a per-day rollup maintained in the insert transaction;
   the exact scan over `episodes` (covering index) is timed too, for reference.

    .venv/bin/python bench/bench_store.py [--n 1000000] [--backends sqlite,postgresql]

PostgreSQL runs in a fresh database `flywheel_bench_<random>` on --pg-server, dropped afterwards.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

from db.models import Episode
from db.records import EpisodeRecord
from db.store import ExperienceStore, _episode_values

FAMILIES = ["pick", "place", "push", "drawer", "tissue", "handover"]
N_VERSIONS = 10
DAYS = 365
T_END = datetime(2025, 6, 1, tzinfo=UTC)


def synthetic(n: int, seed: int, version_ids: list[int], lo: float = 0.0, hi: float = DAYS) -> list[EpisodeRecord]:
    """`n` metadata-only episodes in days [lo, hi) of a year, in time order (as a running flywheel writes
    them): mostly rollouts, the world-model version advancing over time."""
    rng = random.Random(seed)
    out = []
    for day in sorted(lo + rng.random() * (hi - lo) for _ in range(n)):
        rollout = rng.random() < 0.9
        version = version_ids[min(int(day / DAYS * len(version_ids)), len(version_ids) - 1)] if rollout else None
        out.append(EpisodeRecord(
            source="rollout" if rollout else rng.choice(("expert", "play")),
            task_family=rng.choice(FAMILIES), instruction="pick up the red cube and put it in the bowl",
            policy="imagine_then_act" if rollout else "scripted_expert", success=rng.random() < 0.4,
            length=rng.randint(20, 200), reward=rng.random(), backend="sim" if rng.random() < 0.8 else "neo:r1",
            seed=rng.randint(0, 10**6), split="train", world_model_version_id=version,
            timings={"plan_s": rng.random(), "exec_s": rng.random()},
            artifact_uri="ab/" + "ab" * 32 + ".npz", artifact_sha256="ab" * 32,
            created_at=T_END - timedelta(days=DAYS - day),
        ))
    return out


def _clear(engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE episodes, episode_rollups RESTART IDENTITY CASCADE"))
        else:
            conn.execute(text("DELETE FROM episodes"))
            conn.execute(text("DELETE FROM episode_rollups"))


def bench_insert(store: ExperienceStore, version_ids: list[int], n: int, batch: int, rounds: int) -> dict:
    """Raw Core and store-API inserts of the same rows into the same table, interleaved batch by batch
    (alternating which goes first) so load on a shared machine hits both alike; total time per method."""
    records = synthetic(n, 1, version_ids, 0.0, DAYS * n / 1_000_000)  # a 1M-per-year arrival rate
    rows = [_episode_values(r, datetime.now(UTC)) for r in records]  # the raw baseline gets ready-made dicts
    table = Episode.__table__
    spent = {"raw": 0.0, "api": 0.0}
    for rnd in range(rounds):
        _clear(store.engine)
        for k, i in enumerate(range(0, n, batch)):
            for which in (("raw", "api") if (k + rnd) % 2 == 0 else ("api", "raw")):
                t0 = time.perf_counter()
                if which == "raw":
                    with store.engine.begin() as conn:
                        conn.execute(table.insert(), rows[i:i + batch])
                else:
                    store.record_episodes_bulk(records[i:i + batch])
                spent[which] += time.perf_counter() - t0
    _clear(store.engine)
    raw, api = n * rounds / spent["raw"], n * rounds / spent["api"]
    return {"rows": n, "batch": batch, "rounds": rounds, "raw_core_rows_per_s": round(raw),
            "store_api_rows_per_s": round(api), "ratio": round(api / raw, 3)}


def _timed(fn, warmup: int, repeats: int) -> tuple[float, object]:
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, result


def bench_query(store: ExperienceStore, version_ids: list[int], n: int, batch: int) -> dict:
    """Load `n` episodes through the bulk API, then time the success-rate query (rollup and exact)."""
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, n, batch)):
        m = min(batch, n - start)
        store.record_episodes_bulk(synthetic(m, 100 + i, version_ids, DAYS * start / n, DAYS * (start + m) / n))
    load_s = time.perf_counter() - t0
    with store.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
        n_rollup = conn.execute(text("SELECT count(*) FROM episode_rollups")).scalar_one()
    ms, rates = _timed(store.success_rate, warmup=3, repeats=15)
    exact_ms, exact = _timed(lambda: store.success_rate(exact=True), warmup=1, repeats=5)
    assert sum(r.n for r in rates) == n and [(r.n, r.successes) for r in rates] == [(r.n, r.successes) for r in exact]
    return {"episodes": n, "load_s": round(load_s, 1), "groups": len(rates), "rollup_rows": n_rollup,
            "method": "episode_rollups (per-day rollup maintained on insert)",
            "median_ms": round(ms, 2), "exact_scan_median_ms": round(exact_ms, 1)}


def run_backend(url: str, artifact_dir: str, args: argparse.Namespace) -> dict:
    store = ExperienceStore.open(url, artifact_dir, create=True)
    try:
        version_ids = [store.register_model("world_model", f"v{i}", "0" * 64, {"v": i}).id for i in range(N_VERSIONS)]
        insert = bench_insert(store, version_ids, args.insert_rows, args.batch, args.rounds)
        query = bench_query(store, version_ids, args.n, args.batch)
    finally:
        store.close()
    return {"insert": insert, "success_rate_query": query}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="episodes for the success-rate query")
    ap.add_argument("--insert-rows", type=int, default=50_000, help="rows per insert-throughput round")
    ap.add_argument("--batch", type=int, default=5_000, help="rows per transaction")
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw/API rounds (median)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg-server", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    args = ap.parse_args()

    out: dict = {"bench": "store", "n": args.n, "targets": {"insert_ratio_min": 0.8,
                 "query_ms_max": {"postgresql": 100, "sqlite": 300}}}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                out["sqlite"] = run_backend(f"sqlite:///{tmp}/bench.sqlite", f"{tmp}/artifacts", args)
            elif backend == "postgresql":
                name = f"flywheel_bench_{uuid.uuid4().hex[:10]}"
                admin = create_engine(f"{args.pg_server}/postgres", isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                try:
                    out["postgresql"] = run_backend(f"{args.pg_server}/{name}", f"{tmp}/artifacts", args)
                finally:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()
            else:
                raise SystemExit(f"unknown backend {backend!r} (sqlite, postgresql)")
    for backend in ("sqlite", "postgresql"):
        if backend in out:
            r = out[backend]
            r["insert_ratio_ok"] = r["insert"]["ratio"] >= 0.8
            r["query_ok"] = r["success_rate_query"]["median_ms"] <= out["targets"]["query_ms_max"][backend]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
