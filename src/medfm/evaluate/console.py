"""An evaluation's results as a terminal shows them: narrow tables that stay readable in 80 columns.

The full tables (every metric, eval set and subgroup) are in ``results.md`` and ``report.html``; the
terminal gets, per task, AUROC with its interval and the interval's width (how much the test set can
tell), balanced accuracy, then the paired comparisons and how the run was made (cross-validation,
skipped baselines).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import RenderableType
from rich.table import Column, Table
from rich.text import Text

from medfm.evaluate.report import ALL_SUBJECTS, MAIN_EVAL_SET, MISSING, format_estimate, format_p_value

NAN = float("nan")


def summary(out: str | Path) -> list[RenderableType]:
    """Renderables for the evaluation written to ``out`` (its results, comparisons and provenance)."""
    out = Path(out)
    rows = pd.read_csv(out / "results.csv", dtype={"modality": str, "setting": str})
    rows[["modality", "setting"]] = rows[["modality", "setting"]].fillna("")
    main = rows[(rows["eval_set"] == MAIN_EVAL_SET) & (rows["subgroup"] == ALL_SUBJECTS)]
    shown: list[RenderableType] = [
        task_table(task, main[main["task"] == task]) for task in main["task"].unique()
    ]
    comparisons = out / "comparisons.csv"
    if comparisons.is_file():
        table = comparison_table(pd.read_csv(comparisons))
        if table.row_count:
            shown.append(table)
    provenance = out / "provenance.json"
    notes = (
        json.loads(provenance.read_text()).get("summary", {}).get("notes", []) if provenance.is_file() else []
    )
    shown += [Text(f"- {note}") for note in notes]
    return shown


def task_table(task: str, rows: pd.DataFrame) -> Table:
    """AUROC [95 % CI], its width and balanced accuracy of every run of one task."""
    modality = next((m for m in rows["modality"] if m), "")
    table = Table(
        "model",
        "protocol",
        Column("AUROC [95 % CI]", no_wrap=True),  # numbers never wrap: names do
        Column("width", no_wrap=True),
        Column("bal. acc.", no_wrap=True),
        title=f"{task}" + (f" ({modality})" if modality else ""),
        box=box.SIMPLE,
        title_justify="left",
    )
    for (model, protocol, setting), run in rows.groupby(["model", "protocol", "setting"], sort=False):
        metric = run.set_index("metric")
        auroc = [NAN] * 3
        if "auroc" in metric.index:
            auroc = metric.loc["auroc", ["value", "ci_low", "ci_high"]].to_numpy(dtype=float)
        balanced = float(metric["value"].get("balanced_accuracy", NAN))
        width = auroc[2] - auroc[1]
        table.add_row(
            model,
            f"{protocol} {setting}".strip(),
            format_estimate(*auroc),
            MISSING if pd.isna(width) else f"{width:.3f}",
            format_estimate(balanced, NAN, NAN),
        )
    return table


def comparison_table(comparisons: pd.DataFrame) -> Table:
    """The encoder minus each baseline, paired, with raw and Holm-adjusted p (the task named only when
    the table holds several)."""
    several = comparisons["task"].nunique() > 1
    encoders = ", ".join(dict.fromkeys(m.rsplit(" (", 1)[0] for m in comparisons["model_a"]))
    table = Table(
        *(["task"] if several else []),
        "protocol",
        "baseline",
        Column("Δ AUROC [95 % CI]", no_wrap=True),
        Column("p", no_wrap=True),
        Column("p Holm", no_wrap=True),
        title=f"{encoders} minus each baseline, paired (one-sided p: encoder better)",
        box=box.SIMPLE,
        title_justify="left",
    )
    for row in comparisons.itertuples(index=False):
        table.add_row(
            *([row.task] if several else []),
            row.protocol,
            row.model_b,
            format_estimate(row.diff, row.ci_low, row.ci_high, signed=True),
            format_p_value(row.p_value),
            format_p_value(row.p_holm),
        )
    return table
