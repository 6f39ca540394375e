"""bench/bench_ttc.py's summary: the paired N=max / N=1 ratio over the items both points ran."""
from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_ttc", Path(__file__).resolve().parents[2] / "bench" / "bench_ttc.py")
bench_ttc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_ttc)


def row(n: int, split: str, index: int, success: bool) -> dict:
    return {"policy": "imagine_then_act", "n": n, "split": split, "index": index, "success": success,
            "family": "pick", "hold": False, "plan_s": 1.0, "plans": 1}


def test_paired_ratio_counts_only_the_items_both_points_ran():
    rows = [row(1, "in_distribution", i, i < 4) for i in range(10)]
    rows += [row(8, "in_distribution", i, i < 6 or i == 9) for i in range(10)]
    rows.append(row(8, "in_distribution", 10, True))  # N=1 never ran item 10: not a pair
    rows += [row(1, "new_tasks", 0, True), row(8, "new_tasks", 0, False)]
    got = bench_ttc.paired_ratio(rows, 1, 8, "in_distribution")
    assert got["items"] == 10 and got["rate_lo"] == 0.4 and got["rate_hi"] == 0.7
    assert got["ratio"] == 1.75 and got["only_hi"] == 3 and got["only_lo"] == 0
    lo, hi = got["ratio_ci95"]
    assert 1.0 <= lo < 1.75 < hi
    pooled = bench_ttc.paired_ratio(rows, 1, 8)
    assert pooled["items"] == 11 and pooled["only_lo"] == 1 and pooled["ratio"] == 7 / 5
    assert bench_ttc.paired_ratio(rows, 1, 8, "ood_objects") is None
    summary = bench_ttc.summarize(rows, [1, 8])
    assert summary["ratio_n8_vs_n1_paired"]["in_distribution"] == got
    assert summary["ratio_n8_vs_n1"]["in_distribution"] == round(8 / 11 / 0.4, 3)  # unpaired: all 11 N=8 items


def test_the_summary_counts_the_chosen_candidates_goal_guidance():
    rows = [row(4, "in_distribution", i, False) for i in range(2)]
    rows[0]["plan_steps"] = [{"candidates": [{"goal_guidance": 1.0, "chosen": False}, {"goal_guidance": 2.0, "chosen": True}]},
                        {"candidates": [{"goal_guidance": 1.0, "chosen": True}, {"goal_guidance": 2.0, "chosen": False}]}]
    rows[1]["plan_steps"] = [{"candidates": [{"goal_guidance": 1.0, "chosen": False}, {"goal_guidance": 2.0, "chosen": True}]}]
    got = bench_ttc.summarize(rows, [4])["curve"]["in_distribution"]["4"]["chosen_goal_guidance"]
    assert got == {"plans": 3, "mean": round(5 / 3, 4), "counts": {"1": 1, "2": 2}}
    assert "chosen_goal_guidance" not in bench_ttc.summarize([row(1, "new_tasks", 0, True)], [1])["curve"]["new_tasks"]["1"]


def test_shards_parse_and_bad_ones_say_what_was_wrong():
    assert bench_ttc.parse_shard(None) == (0, 1)
    assert bench_ttc.parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "1", "a/b", "0/0", "-1/2"):
        try:
            bench_ttc.parse_shard(bad)
        except SystemExit as e:
            assert "--shard" in str(e) and bad in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_merged_results_count_each_episode_once(tmp_path):
    import json
    models = {"world_model": "w", "idm": "i"}
    rows = [row(1, "in_distribution", 0, True), row(1, "in_distribution", 0, False), row(1, "in_distribution", 1, False),
            row(8, "in_distribution", 0, True)]
    for r in rows:
        r["models"] = models
    other = dict(row(1, "in_distribution", 2, True), models={"world_model": "x", "idm": "i"})
    path = tmp_path / "merged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, other]))
    kept = bench_ttc.load_done(path, models)
    assert [(r["n"], r["index"], r["success"]) for r in kept] == [(1, 0, True), (1, 1, False), (8, 0, True)]
