"""The flywheel's report: success per iteration per split with 95% CIs, promotions and why, the world-model
evaluator's agreement, and a PNG plot of success over iterations. Written into the data directory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt_rate(r: dict[str, Any]) -> str:
    return f"{r['rate']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] (n={r['n']})"


def plot_success(history: list[dict[str, Any]], path: Path) -> Path:
    """Champion success per split over iterations, with 95% Wilson intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    splits = sorted({s for h in history for s in h.get("champion_success", {})})
    for k, split in enumerate(splits):
        pts = [(h["iteration"], h["champion_success"][split]) for h in history if split in h.get("champion_success", {})]
        xs = [p[0] + 0.04 * (k - (len(splits) - 1) / 2) for p in pts]  # dodge overlapping error bars
        ys = [p[1]["rate"] for p in pts]
        err = [[y - p[1]["ci_low"] for y, p in zip(ys, pts)], [p[1]["ci_high"] - y for y, p in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=split)
    ax.set_xlabel("flywheel iteration (0 = bootstrap)")
    ax.set_ylabel("champion success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Success over flywheel iterations (95% Wilson CI)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(out_dir: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and success.png under `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    history = summary.get("history", [])
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "plot": out_dir / "success.png"}
    paths["json"].write_text(json.dumps(summary, indent=2, default=str))
    plot_success(history, paths["plot"])
    lines = ["# Flywheel report", "", f"Data directory: `{summary.get('data_dir')}`  ",
             (f"Preset: {summary.get('preset')}; iterations: {len(history) - 1 if history else 0}; "
             f"wall time {summary.get('wall_s', 0):.0f} s; peak memory {summary.get('peak_rss_mib', 0):.0f} MiB"), "",
             "## Champion success per iteration and split (95% Wilson CI)", ""]
    splits = sorted({s for h in history for s in h.get("champion_success", {})})
    lines.append("| iteration | champion (wm, idm) | " + " | ".join(splits) + " |")
    lines.append("|---|---|" + "---|" * len(splits))
    for h in history:
        row = h.get("champion_success", {})
        lines.append(f"| {h['iteration']} | {h.get('champion')} | "
                     + " | ".join(_fmt_rate(row[s]) if s in row else "-" for s in splits) + " |")
    lines += ["", "## Promotions", ""]
    for h in history[1:]:
        lines.append(f"- iteration {h['iteration']}: {'PROMOTED' if h.get('promoted') else 'kept champion'}"
                     f" - {h.get('reason', '')}")
    wm_eval = summary.get("world_model_evaluator")
    if wm_eval:
        lines += ["", "## World model as policy evaluator", "",
                  (f"Pearson r between predicted and real success over {wm_eval.get('n_policies')} policies: "
                  f"{wm_eval.get('pearson_r')}; pairwise ranking accuracy (true gap >= 15 points): "
                  f"{wm_eval.get('pairwise_accuracy')} over {wm_eval.get('pairs')} pairs.")]
    verdict = summary.get("verdict")
    if verdict:
        lines += ["", "## Does the flywheel improve anything?", "", verdict]
    lines += ["", "![success over iterations](success.png)", ""]
    paths["markdown"].write_text("\n".join(lines))
    return paths
