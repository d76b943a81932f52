"""The continual-learning report: the stream, each strategy's result matrix and summaries with subject-
bootstrap intervals, comparisons with naive fine-tuning and joint training, cost, and figures.

Files: ``continual.md``, ``results.csv`` (every R[i, j], validation and test), ``summary.csv``,
``comparisons.csv``, ``matrix_<strategy>.png``, ``curves.png``, ``summary.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm.config import config_to_dict
from medfm.continual.config import ContinualConfig, slug
from medfm.continual.figures import plot_experience_curves, plot_result_matrix, plot_strategy_summary
from medfm.continual.intervals import (
    paired_difference,
    resampled_matrices,
    resampled_summaries,
    summary_intervals,
)
from medfm.continual.metrics import summarise
from medfm.continual.stream import Stream

SUMMARY_KEYS = ("acc", "avg_incremental_acc", "forgetting", "forgetting_trained", "bwt", "fwt")
SUMMARY_NAMES = {
    "acc": "ACC",
    "avg_incremental_acc": "avg. incremental ACC",
    "forgetting": "forgetting",
    "forgetting_trained": "forgetting (trained)",
    "bwt": "BWT",
    "fwt": "FWT",
}


def fmt(value: float, digits: int = 3) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def with_interval(value: float, interval: tuple[float, float] | None) -> str:
    if interval is None or math.isnan(value) or math.isnan(interval[0]):
        return fmt(value)
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def write_report(
    folder: Path,
    config: ContinualConfig,
    stream: Stream,
    results: list[tuple[str, Path, dict[str, Any]]],
    failures: dict[str, str],
) -> dict[str, Any]:
    """Write every table, figure and ``continual.md``; return the headline numbers for the run record."""
    names = stream.names
    metric = config.metric
    matrices = {title: np.array(r["R"]["test"], dtype=float) for title, _, r in results}
    initial = {title: np.array(r["initial"]["test"], dtype=float) for title, _, r in results}
    summaries = {title: summarise(matrices[title], initial[title]) for title in matrices}
    resampled = {}
    if config.bootstrap:
        for title, output, _ in results:
            predictions = dict(np.load(output / "predictions.npz"))
            matrices_and_initial = resampled_matrices(
                predictions, stream, metric, config.bootstrap, config.seed
            )
            resampled[title] = resampled_summaries(*matrices_and_initial)
    intervals = {title: summary_intervals(resampled[title]) for title in resampled}

    pd.DataFrame(result_rows(results, names)).to_csv(folder / "results.csv", index=False)
    pd.DataFrame(summary_rows(results, summaries, intervals)).to_csv(folder / "summary.csv", index=False)
    comparisons = compare(summaries, resampled)
    pd.DataFrame(comparisons).to_csv(folder / "comparisons.csv", index=False)

    figures = []
    for title in matrices:
        path = folder / f"matrix_{slug(title)}.png"
        plot_result_matrix(
            matrices[title], names, path, title=f"{title}: {metric} after each step", metric=metric
        )
        figures.append((f"{title}: result matrix", path.name))
    plot_experience_curves(matrices, names, folder / "curves.png", metric=metric)
    plot_strategy_summary(summaries, folder / "summary.png", metric=metric)

    text = document(config, stream, results, summaries, intervals, comparisons, failures, figures)
    (folder / "continual.md").write_text(text)
    return {
        "acc": {t: s["acc"] for t, s in summaries.items()},
        "forgetting": {t: s["forgetting"] for t, s in summaries.items()},
    }


def result_rows(results: list[tuple[str, Path, dict[str, Any]]], names: list[str]) -> list[dict[str, Any]]:
    """Every R[i, j] and starting score, on validation and test, one row each."""
    rows = []
    for title, _, result in results:
        for split, matrix in result["R"].items():
            steps = [("start", result["initial"][split]), *zip(names, matrix)]
            for after, values in steps:
                rows += [
                    {"strategy": title, "split": split, "after": after, "experience": name, "value": value}
                    for name, value in zip(names, values)
                ]
    return rows


def summary_rows(results, summaries, intervals) -> list[dict[str, Any]]:
    """Each strategy's summaries with their intervals, and its cost."""
    rows = []
    for title, _, result in results:
        row = {"strategy": title, **summaries[title]}
        for key, (low, high) in intervals.get(title, {}).items():
            row[f"{key}_low"], row[f"{key}_high"] = low, high
        row.update(
            train_seconds=sum(result["train_seconds"]),
            wall_seconds=result["wall_seconds"],
            memory_mb=max(result["memory_bytes"]) / 1e6,
            peak_rss_mb=result["peak_rss_mb"],
            steps=sum(result["steps"]),
        )
        rows.append(row)
    return rows


def compare(
    summaries: dict[str, dict[str, float]], resampled: dict[str, dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """Each strategy against naive fine-tuning (forgetting difference, with the share of naive's forgetting
    removed when naive forgot) and joint training (ACC difference); intervals are paired over the same
    resamples (a ratio's interval is not given: it explodes where naive's resampled forgetting nears 0)."""
    rows = []
    nan = (math.nan, math.nan)
    naive = summaries.get("naive", {}).get("forgetting", math.nan)
    for title, values in summaries.items():
        if title != "naive" and not math.isnan(naive) and not math.isnan(values["forgetting"]):
            interval = (
                paired_difference(resampled[title], resampled["naive"], "forgetting") if resampled else nan
            )
            rows.append(
                comparison(title, "naive", "forgetting difference", values["forgetting"] - naive, interval)
            )
            if naive > 0:
                removed = 1 - values["forgetting"] / naive
                rows.append(comparison(title, "naive", "share of forgetting removed", removed, nan))
        if "joint" in summaries and title != "joint":
            interval = paired_difference(resampled[title], resampled["joint"], "acc") if resampled else nan
            gap = values["acc"] - summaries["joint"]["acc"]
            rows.append(comparison(title, "joint", "ACC difference", gap, interval))
    return rows


def comparison(title: str, against: str, measure: str, value: float, interval: tuple[float, float]) -> dict:
    return {
        "strategy": title,
        "against": against,
        "measure": measure,
        "value": value,
        "low": interval[0],
        "high": interval[1],
    }


def interval_text(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"[{fmt(low)}, {fmt(high)}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def document(config, stream, results, summaries, intervals, comparisons, failures, figures) -> str:
    metric = config.metric
    settings = config_to_dict(config)
    out = [
        f"# Continual learning: {config.name}",
        "",
        f"Scenario **{stream.scenario}-incremental**, {len(stream.experiences)} experiences, shared "
        f"trunk `{config.encoder}` ({stream.trunk.name}), metric **{metric}** on each experience's "
        f"test subjects. R[i, j] is experience j's score after step i. Intervals: 95 % percentile over "
        f"{config.bootstrap} resamples of test subjects, the same resamples for every strategy (paired "
        "differences).",
        "",
        "## Stream",
        "",
        markdown_table(
            ["#", "experience", "task", "input", "head", "classes", "train", "val", "test"],
            [
                [
                    str(e.index),
                    e.name,
                    e.task,
                    e.kind,
                    e.head,
                    ", ".join(e.classes),
                    *(str(len(e.splits[s])) for s in ("train", "val", "test")),
                ]
                for e in stream.experiences
            ],
        ),
        "",
        "## Strategies",
        "",
        markdown_table(
            [
                "strategy",
                *(SUMMARY_NAMES[k] for k in SUMMARY_KEYS),
                "train s",
                "extra memory MB",
                "peak RSS MB",
            ],
            [
                [
                    title,
                    *(
                        with_interval(summaries[title][k], intervals.get(title, {}).get(k))
                        for k in SUMMARY_KEYS
                    ),
                    f"{sum(r['train_seconds']):.0f}",
                    f"{max(r['memory_bytes']) / 1e6:.1f}",
                    f"{r['peak_rss_mb']:.0f}",
                ]
                for title, _, r in results
            ],
        ),
        "",
        "ACC: mean of the last row; forgetting: mean over earlier experiences of the best earlier "
        "score minus the last (Chaudhry et al. 2018); forgetting (trained): score right after training "
        "minus the last (avalanche's; BWT is its negative); FWT: score before training on an experience "
        "minus the starting model's. Joint training has only the last row, so it has no forgetting or "
        "transfer.",
        "",
    ]
    if comparisons:
        out += [
            "## Against naive fine-tuning and joint training",
            "",
            markdown_table(
                ["strategy", "against", "measure", "value", "95 % interval"],
                [
                    [
                        c["strategy"],
                        c["against"],
                        c["measure"],
                        fmt(c["value"]),
                        interval_text(c["low"], c["high"]),
                    ]
                    for c in comparisons
                ],
            ),
            "",
        ]
    out += ["## Result matrices (test)", ""]
    names = stream.names
    for title, _, result in results:
        matrix = result["R"]["test"]
        rows = [["start", *(fmt(v) for v in result["initial"]["test"])]]
        rows += [[f"after {names[i]}", *(fmt(v) for v in row)] for i, row in enumerate(matrix)]
        out += [f"### {title}", "", markdown_table(["", *names], rows), ""]
    out += ["## Figures", "", "![per-experience curves](curves.png)", "", "![summary](summary.png)", ""]
    out += [f"![{caption}]({path})" for caption, path in figures]
    out += ["", "## Settings", "", "```yaml", yaml_dump(settings), "```", ""]
    if failures:
        out += ["## Failed strategies", ""] + [f"- {title}: see failures.json" for title in failures] + [""]
    return "\n".join(out)


def yaml_dump(settings: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(settings, sort_keys=False).rstrip()
