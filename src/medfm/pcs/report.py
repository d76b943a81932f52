"""The PCS report (``pcs.md`` and ``report.html``): predictability, stability, computability, cards.

Sections: the grid and its prediction check; predictability (validation and test per model); stability
(distribution of each metric per axis, as figures and a table, with the axis that moves it most); rank
stability and pairwise wins; agreement of predictions across cells; computability; the data and model
cards; and the reproducibility record with the command that re-runs a row. Each summary is shown over
all cells, with how many of the cells behind each number passed the prediction check, and again over
the passing cells only, labelled as such.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from medfm.evaluate.report import REPORT_CSS, html_image, html_table, markdown_table
from medfm.pcs.grid import Grid

Block = str | pd.DataFrame | Path  # a paragraph (Markdown), a table, or a figure
DPI = 110


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float | np.floating):
        return "–" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _label(row: pd.Series | dict) -> str:
    setting = f" / {row['setting']}" if row.get("setting") else ""
    return f"{row['model']} / {row['protocol']}{setting}"


def _mark_passes(view: pd.DataFrame, table: pd.DataFrame, column: str, passing_only: bool) -> pd.DataFrame:
    """Over all cells, ``column`` with how many of the cells behind each number passed the check
    ("0.910 (14/16 pass)"); over passing cells only, a "pass rate" column (among all cells with a value)."""
    if passing_only:
        return view.assign(**{"pass rate": [f"{rate:.0%}" for rate in table["pass_rate"]]})
    cells = table["raters"] if "raters" in table else table["cells"]
    marked = [f"{value} ({n}/{c} pass)" for value, n, c in zip(view[column], table["n_pass"], cells)]
    return view.assign(**{column: marked})


def whole_set_rows(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Rows of ``split`` over all subjects (and, on test, the whole test set rather than a named subset)."""
    keep = (table["split"] == split) & (table["subgroup"] == "all")
    if split == "test":
        keep &= table["eval_set"] == "test"
    return table[keep]


def predictability(results: pd.DataFrame, stability: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """Per model: its validation score on the check metric, how many cells passed, and its test metrics
    (mean ± sd) over the cells summarised in ``stability``."""
    check = grid.config.check.metric or next(iter(grid.config.report_metrics), grid.stage.metrics[0])
    val = whole_set_rows(results, "val")
    val = val[val["metric"] == check]
    test = whole_set_rows(stability)
    rows = []
    runs = results[["task", "model", "protocol", "setting", "cell", "passed"]].drop_duplicates()
    for (task, model, protocol, setting), group in runs.groupby(["task", "model", "protocol", "setting"]):
        row = {"task": task, "model": _label({"model": model, "protocol": protocol, "setting": setting})}
        scores = val[
            (val.task == task) & (val.model == model) & (val.protocol == protocol) & (val.setting == setting)
        ]
        row[f"val {check} (mean)"] = _fmt(scores["value"].mean()) if len(scores) else "–"
        row["cells passed"] = f"{int(group['passed'].sum())} / {len(group)}"
        for metric in grid.config.report_metrics:
            hit = test[
                (test.task == task)
                & (test.model == model)
                & (test.protocol == protocol)
                & (test.setting == setting)
                & (test.metric == metric)
            ]
            row[f"test {metric}"] = (
                f"{hit['mean'].iloc[0]:.3f} ± {_fmt(hit['sd'].iloc[0])}" if len(hit) else "–"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def stability_view(stability: pd.DataFrame, metrics: list[str], passing_only: bool = False) -> pd.DataFrame:
    test = whole_set_rows(stability)
    test = test[test["metric"].isin(metrics)]
    view = pd.DataFrame(
        {
            "task": test["task"],
            "model": test.apply(_label, axis=1),
            "metric": test["metric"],
            "cells": test["cells"],
            "mean": test["mean"].map(_fmt),
            "sd": test["sd"].map(lambda v: _fmt(v, 4)),
            "95 % of cells": [f"[{a:.3f}, {b:.3f}]" for a, b in zip(test["q025"], test["q975"])],
            "range": [f"[{a:.3f}, {b:.3f}]" for a, b in zip(test["min"], test["max"])],
            "moved most by": [
                f"{axis} ({share:.0%})" if axis else "–"
                for axis, share in zip(test["top_axis"], test["top_axis_share"])
            ],
        }
    )
    return _mark_passes(view, test, "mean", passing_only)


def effects_view(effects: pd.DataFrame, metric: str) -> pd.DataFrame:
    test = whole_set_rows(effects)
    test = test[test["metric"] == metric]
    return pd.DataFrame(
        {
            "task": test["task"],
            "model": test.apply(_label, axis=1),
            "axis": test["axis"],
            "alternatives": test["alternatives"],
            "sd of alternative means": test["effect_sd"].map(lambda v: _fmt(v, 4)),
            "range of alternative means": test["effect_range"].map(lambda v: _fmt(v, 4)),
            "share of variance": test["share"].map(lambda v: f"{v:.0%}"),
            "pass rate": test["pass_rate"].map(lambda v: f"{v:.0%}"),
        }
    )


def ranks_view(ranks: pd.DataFrame, metric: str, passing_only: bool = False) -> pd.DataFrame:
    test = whole_set_rows(ranks)
    test = test[test["metric"] == metric].sort_values(["task", "mean_rank"])
    view = pd.DataFrame(
        {
            "task": test["task"],
            "model": test["model"],
            "cells": test["cells"],
            "mean rank": test["mean_rank"].map(lambda v: _fmt(v, 2)),
            "ranked first": test["top_rate"].map(lambda v: f"{v:.0%}"),
            "modal rank": test["modal_rank"],
            "modal ranking holds in": test["ranking_holds"].map(lambda v: f"{v:.0%}"),
        }
    )
    return _mark_passes(view, test, "mean rank", passing_only)


def wins_view(wins: pd.DataFrame, metric: str, passing_only: bool = False) -> pd.DataFrame:
    test = whole_set_rows(wins)
    test = test[test["metric"] == metric]
    view = test[["task", "model", "versus", "wins", "cells"]].assign(
        wins=test["wins"].map(lambda v: f"{v:.0%}")
    )
    return _mark_passes(view, test, "wins", passing_only)


def agreement_view(agreement: pd.DataFrame, passing_only: bool = False) -> pd.DataFrame:
    view = pd.DataFrame(
        {
            "task": agreement["task"],
            "model": agreement.apply(_label, axis=1) if len(agreement) else [],
            "cells (raters)": agreement["raters"],
            "test items": agreement["items"],
            "items not unanimous": agreement["disagreement"].map(lambda v: f"{v:.1%}"),
            "pairwise disagreement": agreement["pairwise_disagreement"].map(lambda v: f"{v:.2%}"),
            "Fleiss' kappa": agreement["fleiss_kappa"].map(lambda v: _fmt(v, 3)),
        }
    )
    return _mark_passes(view, agreement, "Fleiss' kappa", passing_only)


def compute_views(compute: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model (and FLOPs setting): parameters, FLOPs, throughput; per grid: time, memory, energy."""
    models = pd.DataFrame()
    if "parameters" in compute:
        known = compute.dropna(subset=["parameters"])
        grouped = known.groupby(["task", "model", "flops_per_example"], dropna=False)
        models = grouped.agg(
            parameters=("parameters", "first"),
            throughput=("throughput", "median"),
            cells=("cell", "nunique"),
        ).reset_index()
        models["parameters"] = models["parameters"].map(lambda v: f"{v / 1e6:.2f} M")
        models["GFLOPs per example"] = models.pop("flops_per_example").map(lambda v: f"{v / 1e9:.3f}")
        models["examples / s (encoding)"] = models.pop("throughput").map(lambda v: _fmt(v, 1))
    cells = compute.drop_duplicates("cell")
    totals = pd.DataFrame(
        [
            {
                "cells": len(cells),
                "wall time per cell (median s)": _fmt(cells["wall_seconds"].median(), 1),
                "slowest cell (s)": _fmt(cells["wall_seconds"].max(), 1),
                "all cells (s)": _fmt(cells["wall_seconds"].sum(), 1),
                "CPU time per cell (median s)": _fmt(cells["cpu_seconds"].median(), 1),
                "peak RSS (max MB)": _fmt(cells["peak_rss_mb"].max(), 0),
                "energy, all cells (Wh)": _fmt(cells["energy_wh"].sum(), 2),
                "energy per cell (median Wh)": _fmt(cells["energy_wh"].median(), 3),
            }
        ]
    )
    return models, totals


def draw_stability(results: pd.DataFrame, axes: list[str], task: str, metric: str, path: Path) -> Path:
    """One panel per axis: every cell's test value per alternative (hollow where the cell failed the
    prediction check), a line through the means of all cells."""
    data = whole_set_rows(results)
    data = data[(data["task"] == task) & (data["metric"] == metric)]
    data = data.assign(label=data.apply(_label, axis=1))
    labels = sorted(data["label"].unique())
    colours = colormaps["tab10"](np.linspace(0, 1, 10))
    figure = Figure(figsize=(3.6 * len(axes), 3.4))
    panels = figure.subplots(1, len(axes), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for panel, axis in zip(panels, axes):
        order = list(dict.fromkeys(results[axis]))
        for i, label in enumerate(labels):
            rows = data[data["label"] == label]
            x = np.array([order.index(v) for v in rows[axis]], dtype=float)
            offset = (i - (len(labels) - 1) / 2) * 0.12
            colour = colours[i % 10]
            x = x + offset + rng.uniform(-0.03, 0.03, len(x))
            passed = rows["passed"].to_numpy(bool)
            panel.scatter(x[passed], rows["value"][passed], s=12, alpha=0.6, color=colour)
            # scatter's alpha would also fill a hollow marker, so failing cells get their own call
            panel.scatter(x[~passed], rows["value"][~passed], s=12, facecolors="none", edgecolors=colour)
            means = rows.groupby(axis)["value"].mean().reindex(order)
            panel.plot(np.arange(len(order)) + offset, means.values, color=colour, label=label, lw=1.2)
        panel.set_xticks(range(len(order)), order, rotation=30 if len(order) > 4 else 0)
        panel.set_title(axis)
        panel.grid(axis="y", alpha=0.3)
    panels[0].set_ylabel(f"test {metric}")
    figure.suptitle(f"{task}: {metric} across the grid", y=1.03)
    figure.legend(
        *panels[0].get_legend_handles_labels(),
        loc="lower center",
        ncol=min(4, len(labels)),
        fontsize=8,
        bbox_to_anchor=(0.5, -0.08),
    )
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def demote_headings(markdown: str, levels: int = 2) -> str:
    """A card's headings under the report's own sections (``# Title`` becomes ``### Title``)."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


def reproducibility_lines(
    grid: Grid, provenance: dict[str, Any], cells_folder: Path | None = None
) -> list[Block]:
    """The run's code, platform and inputs, and the command that re-runs a cell from ``cells_folder``
    (the folder holding ``cells/``; default: the grid's output)."""
    git = provenance.get("git", {})
    packages = ", ".join(f"{k} {v}" for k, v in provenance.get("packages", {}).items() if v)
    data = pd.DataFrame(
        [
            {"input": name, "files": d["files"], "bytes": d["bytes"], "blake2b": d["blake2b"]}
            for name, d in provenance.get("data", {}).items()
        ]
    )
    first, folder = grid.cells[0].id, cells_folder or grid.output
    return [
        f"- git commit `{git.get('commit')}`" + (" (with uncommitted changes)" if git.get("dirty") else ""),
        f"- Python {provenance.get('python')} on {provenance.get('platform')}; {packages}",
        f"- {grid.config.workers or 1} worker process(es), {grid.config.threads} torch thread(s) each; every "
        "cell's folder holds its resolved config, provenance (seeds) and `cell.json` (choices, costs).",
        f"- Re-run one row and check it matches: `medfm pcs reproduce {folder} --cell {first}` "
        "(or `--row N`, a row number of `results.csv`).",
        data,
    ]


PASSING_NOTE = "**Passing cells only** (a model or protocol that never passes the check is absent):"


def both_views(view, table: pd.DataFrame, passing: pd.DataFrame) -> list[Block]:
    """A summary over all cells, then the same over the passing cells only, each labelled."""
    return ["**All cells:**", view(table, False), PASSING_NOTE, view(passing, True)]


def sections(
    grid: Grid,
    records: list[dict],
    tables: dict[str, pd.DataFrame],
    provenance,
    figures: Path,
    cells_folder: Path | None = None,
):
    results, axes = tables["results"], list(grid.axes)
    metrics = [m for m in grid.config.report_metrics if m in set(results["metric"])]
    primary = metrics[0] if metrics else str(results["metric"].iloc[0])
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    axes_text = "; ".join(f"**{a}**: {', '.join(alts)}" for a, alts in grid.axes.items())
    out: list[tuple[str, list[Block]]] = [
        (
            "Grid",
            [
                f"Stage `{grid.config.stage}`, {len(grid.cells)} cells "
                f"({len(ok)} ran, {len(failed)} failed). "
                f"Axes: {axes_text}.",
                f"Prediction check: {grid.config.check.describe()}. Every summary covers all cells, with "
                "how many of the cells behind each number pass the check ('0.910 (14/16 pass)'); a second "
                "table of each kind keeps only the (cell, model) runs that pass.",
            ],
        ),
        ("Predictability (all cells)", [predictability(results, tables["stability"], grid)]),
    ]
    stability_blocks: list[Block] = []
    for task in dict.fromkeys(results["task"]):
        for metric in metrics[:2]:
            name = f"stability-{task}-{metric}.png".replace("/", "_")
            stability_blocks.append(draw_stability(results, axes, task, metric, figures / name))
    stability_blocks.append(
        "Filled points passed the prediction check, hollow ones did not; lines join the means of all cells."
    )
    stability_blocks += both_views(
        lambda table, passing: stability_view(table, metrics, passing),
        tables["stability"],
        tables["stability_passing"],
    )
    out.append(("Stability (test, all subjects)", stability_blocks))
    effects = [effects_view(tables[name], primary) for name in ("effects", "effects_passing")]
    out.append(
        (
            f"Which judgment call moves {primary} most",
            ["**All cells:**", effects[0], PASSING_NOTE, effects[1]],
        )
    )
    out.append(
        (
            f"Rank stability ({primary})",
            [
                *both_views(lambda t, p: ranks_view(t, primary, p), tables["ranks"], tables["ranks_passing"]),
                "Pairwise: share of cells in which the first model beats the second (over all cells, in how "
                "many of them both models pass).",
                *both_views(lambda t, p: wins_view(t, primary, p), tables["wins"], tables["wins_passing"]),
            ],
        )
    )
    agreement = both_views(agreement_view, tables["agreement"], tables["agreement_passing"])
    if tables["agreement"].empty:
        agreement[1] = "(none: no predicted test labels of these cells are stored here)"
    out.append(("Prediction agreement across cells (test)", agreement))
    models, totals = compute_views(tables["compute"])
    energy = tables["compute"]["energy_method"].iloc[0] if "energy_method" in tables["compute"] else ""
    out.append(
        (
            "Computability",
            [
                models,
                totals,
                f"Energy is an estimate: {energy}. FLOPs count a multiply-add as 2 (torch's counter).",
            ],
        )
    )
    cards = grid.stage.cards(grid.cell_config(grid.cells[0]))
    out.append(("Data card", [cards["data"]]))
    out.append(("Model card", [demote_headings(cards["model"])]))
    out.append(("Reproducibility", reproducibility_lines(grid, provenance, cells_folder)))
    if failed:
        out.append(
            (
                "Failed cells",
                [pd.DataFrame([{"cell": r["cell"], **r["choices"], "error": r["error"]} for r in failed])],
            )
        )
    return out


def write_document(
    out: Path, title: str, parts: list[tuple[str, list[Block]]], markdown: str, page_name: str
) -> dict[str, Path]:
    """A Markdown file and an HTML page in ``out`` from sections of blocks (figures: paths under ``out``)."""
    md = [f"# {title}", ""]
    page = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>\n<style>{REPORT_CSS}</style>\n</head>\n<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, blocks in parts:
        md += [f"## {heading}", ""]
        page.append(f"<h2>{html.escape(heading)}</h2>")
        for block in blocks:
            if isinstance(block, pd.DataFrame):
                md += [markdown_table(block) if len(block) else "(none)", ""]
                page.append(html_table(block) if len(block) else "<p>(none)</p>")
            elif isinstance(block, Path):
                md += [f"![{block.stem}]({block.relative_to(out).as_posix()})", ""]
                page.append(html_image(block, block.stem))
            else:
                md += [block, ""]
                page.append(
                    f"<pre>{html.escape(block)}</pre>" if "\n" in block else f"<p>{html.escape(block)}</p>"
                )
    page.append("</body>\n</html>\n")
    paths = {markdown: out / markdown, page_name: out / page_name}
    paths[markdown].write_text("\n".join(md), encoding="utf-8")
    paths[page_name].write_text("\n".join(page), encoding="utf-8")
    return paths


def write_pcs_report(
    grid: Grid,
    records: list[dict],
    tables: dict[str, pd.DataFrame],
    provenance,
    cells_folder: Path | None = None,
) -> dict[str, Path]:
    """``pcs.md``, ``report.html`` and figures in the grid's output; ``cells_folder``: where the cells
    that ``medfm pcs reproduce`` re-runs are kept, when not there."""
    out = grid.output
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    parts = sections(grid, records, tables, provenance, figures, cells_folder)
    paths = write_document(out, f"PCS report: {grid.config.name}", parts, "pcs.md", "report.html")
    paths.update({p.relative_to(out).as_posix(): p for p in sorted(figures.glob("*.png"))})
    return paths
