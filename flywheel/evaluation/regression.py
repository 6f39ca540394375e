"""The fixed sim regression suite: the three splits' CI subsets (same seeds every time) plus the curated
states where a champion failed. Outcomes are keyed by suite item, so challenger and champion pair up."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flywheel.evaluation.stats import wilson_interval

SPLITS = ("in_distribution", "new_tasks", "ood_objects")


@dataclass(frozen=True)
class SuiteItem:
    """One evaluation episode: a split item (split, index) or a recorded failure state (episode id)."""

    suite: str  # split name, or "failures"
    key: str  # stable id inside the suite
    spec: dict[str, Any] = field(hash=False, compare=False)


def regression_suite(n_per_split: int, failure_episode_ids: list[int] | None = None) -> list[SuiteItem]:
    """The CI subsets of the three splits (deterministic) and, optionally, the curated failure states."""
    from envs.splits import ci_subset, load_split

    items = []
    for split in SPLITS:
        full = load_split(split)
        index = {(it.seed, it.instruction): i for i, it in enumerate(full)}
        for it in ci_subset(split, n_per_split):
            i = index[(it.seed, it.instruction)]
            items.append(SuiteItem(split, f"{split}:{i}", {"split": split, "split_index": i}))
    for ep_id in failure_episode_ids or []:
        items.append(SuiteItem("failures", f"failures:{ep_id}", {"initial_state_episode": ep_id}))
    return items


def success_by_suite(outcomes: dict[str, bool], items: list[SuiteItem]) -> dict[str, dict[str, Any]]:
    """Per suite: rate, n, and the 95% Wilson interval."""
    out: dict[str, dict[str, Any]] = {}
    for suite in dict.fromkeys(it.suite for it in items):
        vals = [outcomes[it.key] for it in items if it.suite == suite and it.key in outcomes]
        k, n = sum(vals), len(vals)
        lo, hi = wilson_interval(k, n)
        out[suite] = {"rate": k / n if n else 0.0, "n": n, "successes": k, "ci_low": lo, "ci_high": hi}
    return out
