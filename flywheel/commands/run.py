"""`flywheel run`: the main job. Bootstrap, then flywheel iterations through real worker processes,
then a report (JSON, Markdown, PNG) in the data directory. Re-running on the same data directory
continues where it stopped."""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any, Self


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the flywheel end to end (bootstrap, iterations, report)",
                       description="Bootstrap the store and models, run flywheel.iterations iterations with "
                       "real workers, and write a report into data_dir. Overrides: key=value.")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default flywheel.n_workers)")
    p.add_argument("--quiet", action="store_true", help="less progress output")
    p.set_defaults(func=run)


class PeakMemory:
    """Samples the resident memory of this process and all its descendants (Linux /proc) in a thread."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak_kib = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree_rss_kib(self) -> int:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/statm") as f:
                    rss[int(d)] = int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo += children.get(pid, [])
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self._tree_rss_kib())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def run(args: argparse.Namespace, dcfg: Any) -> int:
    from omegaconf import OmegaConf

    from db.store import ExperienceStore
    from flywheel.dispatch import DispatchTrainer, SchedulerEpisodeRunner
    from flywheel.loop import Flywheel
    from flywheel.registry import ModelRegistry
    from flywheel.report import write_report
    from workers.pool import WorkerPool

    cfg = OmegaConf.to_object(dcfg)
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[flywheel {time.strftime('%H:%M:%S')}] {m}", flush=True))
    say(f"data directory: {data}  (store: {cfg.db.url or data / 'store.sqlite'}; broker: {cfg.broker.url or 'embedded'})")
    t0 = time.monotonic()
    store = ExperienceStore.from_config(cfg.db, data, create=True)
    registry = ModelRegistry(store, data)
    n_workers = args.workers or cfg.flywheel.n_workers
    with PeakMemory() as mem:
        say(f"starting {n_workers} worker processes on queues sim, train, eval")
        # every run has finished when the pool stops, so a short grace before SIGKILL loses nothing
        with WorkerPool(cfg, n=n_workers, queues=["sim", "train", "eval"], grace_s=5.0) as pool:
            runner = SchedulerEpisodeRunner(pool.scheduler)
            trainer = DispatchTrainer(pool.scheduler, registry)
            summary = Flywheel(cfg, store, registry, runner, trainer, progress=say).run()
    history = summary["history"]
    if cfg.flywheel.evaluator_states > 0:
        summary["world_model_evaluator"] = evaluate_world_model_as_evaluator(cfg, registry, data / "reports", say)
    summary.update(data_dir=str(data), preset=cfg.preset_name, wall_s=time.monotonic() - t0,
                   peak_rss_mib=mem.peak_kib / 1024, verdict=verdict(history))
    paths = write_report(data / "reports", summary)
    say(f"done in {summary['wall_s']:.0f} s, peak memory {summary['peak_rss_mib']:.0f} MiB")
    print(f"report: {paths['markdown']}\nplot:   {paths['plot']}\njson:   {paths['json']}")
    return 0


def evaluate_world_model_as_evaluator(cfg: Any, registry: Any, out_dir: Path, say: Any) -> dict[str, Any]:
    """Predict each of `flywheel.evaluator_policies`' success with the champion world model (no robot) and
    compare with their real sim success on the same in_distribution states (the table and scatter plot go
    next to the report)."""
    import json

    from flywheel.evaluation.wm_evaluator import (
        PolicySpec,
        evaluate_policies,
        states_from_split,
        write_ranking_report,
    )
    from flywheel.hooks import load_checked

    champion = registry.alias("world_model")
    wm = load_checked("world_model", champion.path)
    specs = [PolicySpec.parse(p) for p in cfg.flywheel.evaluator_policies]
    states = states_from_split(cfg.env, "in_distribution", cfg.flywheel.evaluator_states)
    say(f"world model v{champion.version} as policy evaluator: {len(specs)} policies x {len(states)} states")
    results, ranking = evaluate_policies(cfg, wm, specs, states, registry=registry)
    paths = write_ranking_report(results, ranking, out_dir, meta={"world_model_version": champion.version})
    say(f"evaluator: Pearson r {ranking.pearson_r:.2f}, pairwise accuracy {ranking.pairwise_accuracy:.2f} "
        f"over {ranking.pairs} pairs ({paths['markdown']})")
    return json.loads(paths["json"].read_text())


def verdict(history: list[dict[str, Any]]) -> str:
    """Plainly: did the champion's success improve from bootstrap to the last iteration, beyond the CIs?"""
    if len(history) < 2:
        return "Not enough iterations to say."
    first, last = history[0].get("champion_success", {}), history[-1].get("champion_success", {})
    lines = []
    for split in first:
        a, b = first[split], last.get(split)
        if b is None:
            continue
        if b["ci_low"] > a["ci_high"]:
            word = "improved beyond the 95% intervals"
        elif b["ci_high"] < a["ci_low"]:
            word = "got worse beyond the 95% intervals"
        else:
            word = "did not change beyond noise"
        lines.append(f"{split}: {a['rate']:.2f} -> {b['rate']:.2f} ({word})")
    promoted = sum(1 for h in history[1:] if h.get("promoted"))
    return f"Promotions: {promoted} of {len(history) - 1} iterations. " + "; ".join(lines)
