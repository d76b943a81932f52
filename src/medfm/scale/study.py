"""``medfm scale``: a scaling grid (model sizes x data fractions x methods x data mixes), then its fits.

The grid runs through the PCS runner (``stage: scale``), so finished cells are skipped, every cell has its
own run folder, costs are measured and the PCS report comes too. On top of the runner's tables this
writes the study's own: one row per run (``scaling_runs.csv``), one per run and task
(``scaling_points.csv``), the power-law fits per task (``scaling_fits.csv``), the held-out loss against
compute and its frontier, each task's dataset factors and how the slopes follow them, with figures and
``scaling.md`` / ``scaling.html``.
"""

from __future__ import annotations

import json
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm.errors import ConfigError
from medfm.log import get_logger
from medfm.pcs.grid import Grid, load_grid
from medfm.pcs.report import reproducibility_lines, whole_set_rows, write_document
from medfm.pcs.runner import read_cell, read_rows, run_grid
from medfm.scale.bootstrap import exponent_bootstrap, load_probe_predictions
from medfm.scale.factors import dataset_factors
from medfm.scale.figures import (
    draw_compute_curves,
    draw_exponents,
    draw_loss_frontier,
    draw_scaling_curves,
    draw_slope_factors,
)
from medfm.scale.fit import loss_frontier, scaling_fits, slope_factor_table

log = get_logger("scale")

RUN_COLUMNS = (
    "cell",
    "method",
    "model",
    "mix",
    "fraction",
    "parameters",
    "pictures",
    "images_seen",
    "steps",
    "train_flops",
    "heldout_loss",
    "seconds",
)


def load_scale_grid(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """A grid of the ``scale`` stage; its output defaults to ``runs/scale/<name>``."""
    grid = load_grid(path, overrides)
    if grid.config.stage != "scale":
        raise ConfigError(
            f"grid {grid.config.name} is a {grid.config.stage!r} grid; `medfm scale` runs 'scale'"
        )
    if not grid.config.output:
        grid.config.output = f"runs/scale/{grid.config.name}"
    return grid


def mix_name(config: dict[str, Any], choices: dict[str, str]) -> str:
    """The run's pretraining data mix: the ``mix`` axis's choice, else its modality and source filters."""
    if "mix" in choices:
        return choices["mix"]
    data = config["pretrain"]["data"]
    return "+".join([*data["modalities"], *data["sources"]]) or "all"


def runs_table(records: list[dict]) -> pd.DataFrame:
    """One row per finished cell: what it pretrained, on how much, at what cost, and its held-out loss."""
    rows = []
    for record in records:
        trained = next(m for m in record["models"] if m.get("stage") == "pretrain")
        rows.append(
            {
                "cell": record["cell"],
                "method": trained["method"],
                "model": trained["model"],
                "mix": mix_name(record["config"], record["choices"]),
                "fraction": record["config"]["pretrain"]["data"]["fraction"],
                **{k: trained[k] for k in ("parameters", "pictures", "images_seen", "steps", "train_flops")},
                "heldout_loss": trained["heldout_loss"],
                "seconds": record["cost"]["wall_seconds"],
            }
        )
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def points_table(runs: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Every run's linear-probe test scores (whole test set, all patients), one row per task and metric."""
    scores = whole_set_rows(results)
    scores = scores[scores["protocol"] == "linear_probe"]
    scores = scores[["cell", "task", "metric", "value", "ci_low", "ci_high"]]
    return runs.merge(scores, on="cell", how="inner")


def task_factors(grid: Grid) -> pd.DataFrame:
    """BioVFM's dataset factors of every task the grid evaluates, at the evaluation's picture size."""
    from medfm.pcs.stages import eval_memo

    config = grid.cell_config(grid.cells[0])
    size = config.eval.image_size or config.pretrain.image_size
    rows = []
    for name in config.eval.tasks:
        data = eval_memo().task(name, config.eval.task_options.get(name, {}))
        try:
            rows.append(dataset_factors(data, size=size))
        except ValueError as err:  # signals and series have no pictures
            log.warning("task %s: no dataset factors (%s)", name, err)
    return pd.DataFrame(rows, columns=["task", "n_classes", "n_train", "gzip_ratio", "davies_bouldin"])


def run_scale(grid: Grid, executors: list[Executor] | None = None, *, rerun: bool = False) -> dict[str, Path]:
    """Run (or resume) the grid, fit the scaling laws and write the study's tables, figures and report."""
    paths = run_grid(grid, executors, rerun=rerun)
    out = grid.output
    records = [read_cell(out / "cells" / cell.id) for cell in grid.cells]
    records = [r for r in records if r and r["status"] == "ok"]
    metric = grid.config.report_metrics[0] if grid.config.report_metrics else "auroc"
    runs = runs_table(records)
    points = points_table(runs, read_rows(out / "results.csv"))
    fits = scaling_fits(points, metric=metric)
    n_boot = grid.cell_config(grid.cells[0]).eval.n_boot
    boot = exponent_bootstrap(runs, load_probe_predictions(out / "cells", runs), metric, n_boot=n_boot)
    fits = fits.merge(boot, on=["task", "method", "mix", "metric", "law", "variable"], how="left")
    frontier, frontier_fits = loss_frontier(runs)
    factors = task_factors(grid)
    slopes = slope_factor_table(fits, factors) if len(factors) else pd.DataFrame()
    tables = {
        "scaling_runs": runs,
        "scaling_points": points,
        "scaling_fits": fits,
        "loss_frontier": frontier,
        "loss_frontier_fits": frontier_fits,
        "task_factors": factors,
        "slope_factors": slopes,
    }
    for name, table in tables.items():
        paths[f"{name}.csv"] = out / f"{name}.csv"
        table.to_csv(paths[f"{name}.csv"], index=False)
    figures = out / "figures" / "scaling"
    figures.mkdir(parents=True, exist_ok=True)
    drawn = {"exponents": draw_exponents(fits, figures / "exponents.png")} if len(fits) else {}
    drawn |= {
        task: draw_scaling_curves(points, fits, task, metric, figures / f"curves-{task}.png")
        for task in sorted(points["task"].unique())
    }
    drawn["compute"] = draw_compute_curves(points, fits, metric, figures / "compute.png")
    drawn["frontier"] = draw_loss_frontier(frontier, frontier_fits, runs, figures / "loss-frontier.png")
    if len(slopes):
        drawn["factors"] = draw_slope_factors(fits, factors, slopes, figures / "slope-factors.png")
    provenance = json.loads((out / "provenance.json").read_text())
    parts = report_sections(grid, tables, metric, drawn, provenance)
    paths.update(
        write_document(out, f"Scaling study: {grid.config.name}", parts, "scaling.md", "scaling.html")
    )
    return paths


# -- report -----------------------------------------------------------------------------------------------


def _interval(row: pd.Series | None, digits: int = 3) -> str:
    """``b [t-interval] (bootstrap interval)``, or "–" without a fit."""
    if row is None or not np.isfinite(row["exponent"]):
        return "–"
    text = f"{row['exponent']:.{digits}f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
    if np.isfinite(row.get("boot_low", np.nan)):
        text += f" ({row['boot_low']:.{digits}f}, {row['boot_high']:.{digits}f})"
    return text


def summary_table(fits: pd.DataFrame, points: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per task, method and mix: the exponents with their intervals (t over the runs' residuals, and
    the test-patient bootstrap), the fit's R², and the metric of the smallest and the largest run (fewest
    and most parameters x pictures)."""
    rows = []
    scores = points[points["metric"] == metric]
    for (task, method, mix), group in scores.groupby(["task", "method", "mix"]):
        found = fits[
            (fits.task == task) & (fits.method == method) & (fits.mix == mix) & (fits.metric == metric)
        ]

        def pick(law: str, variable: str, found=found) -> pd.Series | None:
            hit = found[(found.law == law) & (found.variable == variable)]
            return hit.iloc[0] if len(hit) else None

        laws = {v: pick("joint", v) for v in ("parameters", "pictures")}
        r2 = next((law["r2"] for law in laws.values() if law is not None), float("nan"))
        size = group["parameters"] * group["pictures"]
        smallest, largest = group.loc[size.idxmin()], group.loc[size.idxmax()]
        rows.append(
            {
                "task": task,
                "method": method,
                "mix": mix,
                "b params": _interval(laws["parameters"]),
                "b pictures": _interval(laws["pictures"]),
                "R² (joint)": f"{r2:.2f}" if np.isfinite(r2) else "–",
                "b compute": _interval(pick("single", "train_flops")),
                f"{metric} smallest run": f"{smallest['value']:.3f}",
                f"{metric} largest run": f"{largest['value']:.3f}",
            }
        )
    return pd.DataFrame(rows)


def runs_view(runs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell": runs["cell"],
            "method": runs["method"],
            "model": runs["model"],
            "mix": runs["mix"],
            "parameters": runs["parameters"].map(lambda v: f"{v / 1e6:.2f} M"),
            "pictures": runs["pictures"],
            "steps": runs["steps"],
            "images seen": runs["images_seen"],
            "training FLOPs": runs["train_flops"].map(lambda v: f"{v:.2e}"),
            "held-out loss": runs["heldout_loss"].map(lambda v: f"{v:.4f}"),
            "wall (s)": runs["seconds"].map(lambda v: f"{v:.0f}"),
        }
    )


def _rounded(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    return table.apply(lambda c: c.round(digits) if c.dtype.kind == "f" else c)


def report_sections(
    grid: Grid, tables: dict[str, pd.DataFrame], metric: str, drawn: dict[str, Path], provenance
) -> list[tuple[str, list]]:
    runs, points, fits = tables["scaling_runs"], tables["scaling_points"], tables["scaling_fits"]
    axes = [f"- {axis}: " + ", ".join(alternatives) for axis, alternatives in grid.axes.items()]
    config = grid.cell_config(grid.cells[0])
    n_boot = config.eval.n_boot
    total = runs["seconds"].sum()
    study = [
        f"{len(runs)} of {len(grid.cells)} runs finished. Each pretrains `{config.pretrain.image_size}` px "
        f"crops of the corpus `{config.pretrain.data.corpus}` (training split) and probes the bundle "
        f"(BioVFM's linear probe, frozen features) on {', '.join(config.eval.tasks)}. Axes:",
        "\n".join(axes),
        f"Fits: per task, method and mix, log({metric}) = a + b_P log(parameters) + b_D log(pictures) "
        f"(joint), and log({metric}) = a + b_C log(training FLOPs) (compute). Exponents come with two 95 % "
        "intervals: [t-interval over the runs' residuals: how closely the law follows the runs] and "
        f"(percentiles over {n_boot} resamples of the test patients, the same resample for every run, "
        "laws refitted: how much the slope depends on which patients were tested). Each point's own "
        "interval (the same subject bootstrap) is drawn in the figures. Training FLOPs are one training "
        "step counted by torch's FLOP counter, times the steps.",
        f"Cells took {total / 60:.1f} min of worker time in all (each cell's wall time, summed); the PCS "
        "report of the same grid (`report.html`) has per-cell costs and the stability tables.",
    ]
    out: list[tuple[str, list]] = [("Study", study)]
    summary = [summary_table(fits, points, metric), *([drawn["exponents"]] if "exponents" in drawn else [])]
    out.append(("Summary", summary))
    out.append(("Scaling curves", [drawn[t] for t in sorted(points["task"].unique()) if t in drawn]))
    out.append(("Metric against compute", [drawn["compute"]]))
    frontier_note = (
        "The method's own loss on held-out corpus pictures (the same pictures for every run of a mix) "
        "against training FLOPs. The frontier is the runs no cheaper run beats; losses of different "
        "methods measure different things and are drawn apart."
    )
    out.append(
        (
            "Held-out loss against compute",
            [frontier_note, drawn["frontier"], _rounded(tables["loss_frontier_fits"])],
        )
    )
    factor_blocks: list = [
        "BioVFM's dataset factors, on pixels at the evaluation size: classes, training examples, gzip "
        "compressibility (compressed / raw bytes) and the Davies-Bouldin index of the classes. With a "
        "handful of tasks the correlations are descriptive, not evidence.",
        _rounded(tables["task_factors"]),
    ]
    if "factors" in drawn:
        factor_blocks += [drawn["factors"], _rounded(tables["slope_factors"])]
    out.append(("Slopes against dataset factors", factor_blocks))
    out.append(("Runs", [runs_view(runs)]))
    out.append(("Fits", [_rounded(fits, 4)]))
    out.append(("Reproducibility", reproducibility_lines(grid, provenance)))
    return out
