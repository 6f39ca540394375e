"""The flywheel: bootstrap, then iterate (collect rollouts with the champion -> retrain -> evaluate
challenger against champion on the same states -> promote only what is better beyond noise).

State lives in the experience store (episodes, versions, aliases, evaluations) plus a small progress file
`data_dir/flywheel/state.json`; every dispatch uses an idempotency key derived from the iteration, so a
restarted run continues where it stopped without duplicating episodes or versions.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flywheel.errors import FlywheelError
from flywheel.evaluation.regression import SuiteItem, regression_suite, success_by_suite
from flywheel.evaluation.stats import paired_promotion_test
from flywheel.hooks import load_checked

log = logging.getLogger("flywheel.loop")



BOOTSTRAP_EXPERT_SEED = 10_000  # the bootstrap's expert episodes run seeds 10000, 10001, ... (their scenes)

class EpisodeRunner(Protocol):
    """Runs episode specs (TaskSpec dicts) to completion; returns one result dict per spec, in order,
    with at least `episode_id` and `success` (None for a run that died). Same `key` -> same runs."""

    def __call__(self, specs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]: ...


@dataclass
class FlywheelState:
    """Progress of one data directory's flywheel (what is done; the store holds everything else)."""

    bootstrapped: bool = False
    iterations_done: int = 0
    rollouts_since_retrain: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    suite_cache: dict[str, dict[str, bool]] = field(default_factory=dict)  # "wm:idm" -> outcomes by key

    @classmethod
    def load(cls, path: Path) -> FlywheelState:
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise FlywheelError(f"flywheel state file {path} is unreadable ({exc}); move it away to start over") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)  # atomic: a crash leaves the old or the new state, never half


class Flywheel:
    """One flywheel over one store. `trainer` builds model versions (see `flywheel.training.pipeline`)."""

    def __init__(self, cfg: Any, store: Any, registry: Any, run_episodes: EpisodeRunner, trainer: Any,
                 progress: Callable[[str], None] = print):
        self.cfg, self.store, self.registry = cfg, store, registry
        self.run_episodes, self.trainer, self.say = run_episodes, trainer, progress
        self.fcfg = cfg.flywheel
        self.state_path = Path(cfg.data_path) / "flywheel" / "state.json"
        self.state = FlywheelState.load(self.state_path)

    # -- the job ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        if not self.state.bootstrapped:
            self.bootstrap()
        for it in range(self.state.iterations_done + 1, self.fcfg.iterations + 1):
            self.iterate(it)
        return {"history": self.state.history, "wall_s": time.monotonic() - t0}

    def champions(self) -> tuple[Any, Any]:
        wm, idm = self.registry.alias("world_model"), self.registry.alias("idm")
        if wm is None or idm is None:
            raise FlywheelError("no champion world model / IDM registered; run the bootstrap first")
        return wm, idm

    def bootstrap(self) -> None:
        """Expert demonstrations and play data, the first models (multi-stage recipe), champions, baseline eval."""
        f = self.fcfg
        self.say(f"bootstrap: collecting {f.bootstrap_expert_episodes} expert, {f.bootstrap_play_episodes} play, "
                 f"{f.bootstrap_perturbed_episodes} perturbed-expert and {f.bootstrap_recovery_episodes} "
                 f"recovery-expert episodes")
        expert = [{"policy": "scripted_expert", "seed": BOOTSTRAP_EXPERT_SEED + i}
                  for i in range(f.bootstrap_expert_episodes)]
        play = [{"policy": "play", "seed": 20_000 + i} for i in range(f.bootstrap_play_episodes)]
        play += [{"policy": "perturbed_expert", "seed": 30_000 + i} for i in range(f.bootstrap_perturbed_episodes)]
        play += [{"policy": "recovery_expert", "seed": 40_000 + i} for i in range(f.bootstrap_recovery_episodes)]
        results = self.run_episodes(expert + play, key="bootstrap:data")
        ok = sum(1 for r in results[: len(expert)] if r.get("success"))
        self.say(f"bootstrap: expert success {ok}/{len(expert)}")
        if self.registry.alias("world_model") is None or self.registry.alias("idm") is None:
            self.say("bootstrap: training the first world model (multi-stage) and IDM")
            wm, idm = self.trainer.train_pair((None, None), phase="bootstrap")
            self.registry.promote("world_model", wm.id, "bootstrap: first world model")
            self.registry.promote("idm", idm.id, "bootstrap: first IDM")
        wm, idm = self.champions()
        held_out = self.held_out_metrics(wm, idm)
        suite = self.suite()
        outcomes = self.evaluate(wm, idm, suite)
        self.state.history.append({
            "iteration": 0, "champion": [wm.version, idm.version], "promoted": True, "reason": "bootstrap",
            "champion_success": success_by_suite(outcomes, suite), "held_out": held_out,
        })
        self.state.bootstrapped = True
        self.state.save(self.state_path)

    def iterate(self, it: int) -> None:
        """Collect rollouts with the champion; every K new episodes retrain, evaluate, maybe promote."""
        f = self.fcfg
        wm, idm = self.champions()
        self.say(f"iteration {it}: {f.episodes_per_iteration} rollouts with champion wm v{wm.version}, idm v{idm.version}")
        specs = [{"policy": "imagine_then_act", "seed": 1_000_000 * it + i,
                  "models": {"world_model": wm.version, "idm": idm.version}} for i in range(f.episodes_per_iteration)]
        results = self.run_episodes(specs, key=f"iter{it}:rollouts")
        rate = sum(bool(r.get("success")) for r in results) / max(1, len(results))
        self.say(f"iteration {it}: rollout success {rate:.2f}")
        self.state.rollouts_since_retrain += len(results)
        record: dict[str, Any] = {"iteration": it, "rollout_success": rate, "champion": [wm.version, idm.version]}
        if self.state.rollouts_since_retrain >= f.retrain_every:
            record.update(self.retrain_and_gate(it, wm, idm))
            self.state.rollouts_since_retrain = 0
        else:
            record.update(promoted=False, reason=f"fewer than {f.retrain_every} new episodes since the last retrain")
        wm, idm = self.champions()
        suite = self.suite()
        record["champion"] = [wm.version, idm.version]
        record["champion_success"] = success_by_suite(self.evaluate(wm, idm, suite), suite)
        self.state.history.append(record)
        self.state.iterations_done = it
        self.state.save(self.state_path)

    def retrain_and_gate(self, it: int, wm: Any, idm: Any) -> dict[str, Any]:
        self.say(f"iteration {it}: fine-tuning challengers from the champions on the accumulated rollouts")
        c_wm, c_idm = self.trainer.train_pair((wm, idm), phase=f"iter{it}")
        self.registry.promote("world_model", c_wm.id, f"iteration {it} challenger", alias="challenger")
        self.registry.promote("idm", c_idm.id, f"iteration {it} challenger", alias="challenger")
        held_out = self.held_out_metrics(c_wm, c_idm)
        suite = self.suite(failures=True)
        champ = self.evaluate(wm, idm, suite)
        chall = self.evaluate(c_wm, c_idm, suite)
        return {**self.gate(it, (wm, idm), (c_wm, c_idm), champ, chall, suite), "challenger_held_out": held_out}

    def held_out_metrics(self, wm: Any, idm: Any) -> dict[str, Any]:
        """World-model PSNR/SSIM/AUROC and IDM DTW/MSE on held-out episodes (recorded as evaluations)."""
        if not hasattr(self.trainer, "evaluate_pair"):
            return {}
        out = self.trainer.evaluate_pair((wm, idm))
        wm_m = {k: v for k, v in out["world_model"].items() if v is not None}
        idm_m = {k: v for k, v in out["idm"].items() if v is not None}
        self.say(f"held-out: world model v{wm.version} PSNR {wm_m.get('psnr', float('nan')):.2f} dB "
                 f"(copy-last-frame {wm_m.get('psnr_copy_last', float('nan')):.2f}), success AUROC "
                 f"{wm_m.get('success_auroc', float('nan')):.2f}; IDM v{idm.version} DTW ratio to baseline "
                 f"{idm_m.get('dtw_ratio', float('nan')):.2f}")
        return out

    def gate(self, it: int, champion: tuple[Any, Any], challenger: tuple[Any, Any], champ: dict[str, bool],
             chall: dict[str, bool], suite: list[SuiteItem]) -> dict[str, Any]:
        """Record both models' suite results; promote the challenger pair only if the paired test says it
        is better beyond noise AND its checkpoints load (a corrupt one is refused: the champion stays)."""
        keys = [s.key for s in suite if s.key in champ and s.key in chall]
        test = paired_promotion_test([chall[k] for k in keys], [champ[k] for k in keys], alpha=self.fcfg.promotion_alpha)
        self.say(f"iteration {it}: {test.reason()}")
        for pair, outcomes in ((challenger, chall), (champion, champ)):
            for suite_name, r in success_by_suite(outcomes, suite).items():
                self.store.record_evaluation(suite_name, pair[0].id, "success_rate", r["rate"], r["n"],
                                             ci_low=r["ci_low"], ci_high=r["ci_high"],
                                             details={"idm_version_id": pair[1].id, "iteration": it})
        promoted, reason = False, test.reason()
        if test.better:
            try:
                for m in challenger:
                    load_checked(m.kind, m.path)
            except Exception as exc:  # noqa: BLE001 - any failure to load means: do not promote
                reason = f"{reason}; challenger refused: {exc}"
            else:
                for m in challenger:
                    self.registry.promote(m.kind, m.id, f"iteration {it}: {test.reason()}")
                promoted = True
        return {"challenger": [challenger[0].version, challenger[1].version], "promoted": promoted,
                "reason": reason, "p_value": test.p_value, "challenger_success": success_by_suite(chall, suite)}

    # -- evaluation ------------------------------------------------------------------------------
    def suite(self, failures: bool = False) -> list[SuiteItem]:
        fail_ids: list[int] = []
        if failures:
            rows = self.store.episodes(source="rollout", success=False, limit=self.fcfg.eval_split_subset)
            fail_ids = [r.id for r in rows if r.initial_state_uri]
        return regression_suite(self.fcfg.eval_split_subset, fail_ids)

    def evaluate(self, wm: Any, idm: Any, suite: list[SuiteItem]) -> dict[str, bool]:
        """Run (or reuse) the imagine-then-act outcomes of (wm, idm) on every suite item."""
        cache_key = f"{wm.version}:{idm.version}"
        cached = self.state.suite_cache.setdefault(cache_key, {})
        todo = [it for it in suite if it.key not in cached]
        if todo:
            self.say(f"evaluating wm v{wm.version} + idm v{idm.version} on {len(todo)} suite episodes")
            specs = [{**it.spec, "policy": "imagine_then_act", "seed": 7,
                      "models": {"world_model": wm.version, "idm": idm.version}, "tags": ["eval", it.suite]}
                     for it in todo]
            results = self.run_episodes(specs, key=f"eval:{cache_key}:{len(cached)}")
            for it, r in zip(todo, results):
                cached[it.key] = bool(r.get("success"))
            self.state.save(self.state_path)
        return {it.key: cached[it.key] for it in suite if it.key in cached}
