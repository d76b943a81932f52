"""The benchmark's results report: every result row as CSV, Markdown tables, figures and one HTML page.

Input is the result rows of :mod:`medfm.evaluate.predictions` (one row per task, model, protocol,
setting, eval set, subgroup and metric), the test-set predictions for ROC curves and, optionally, paired
model comparisons. Main tables use eval set ``"test"`` and subgroup ``"all"``; other eval sets and
subgroups get AUROC tables of their own. The HTML page embeds its figures, so it stays one file.

Figures are drawn on :class:`matplotlib.figure.Figure` objects, not pyplot, so writing a report neither
needs nor changes the caller's matplotlib backend.
"""

from __future__ import annotations

import base64
import html
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

from medfm.evaluate.predictions import RESULT_COLUMNS, Predictions

MAIN_EVAL_SET = "test"
ALL_SUBJECTS = "all"
METRIC_LABELS = {
    "auroc": "AUROC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "F1",
    "mcc": "MCC",
    "ece": "ECE (lower is better)",
}
COMPARISON_COLUMNS = (
    "task",
    "protocol",
    "metric",
    "model_a",
    "model_b",
    "value_a",
    "value_b",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",  # Holm-adjusted over every comparison of the table
)
MISSING = "–"
FIGURE_CAPTIONS = {"bars": "AUROC per model", "roc": "ROC curves", "confusion": "Confusion matrices"}
CHANCE_AUROC = 0.5
DPI = 110
FPR_GRID = np.linspace(0.0, 1.0, 201)  # common grid on which per-class ROC curves are averaged

_KEY_COLUMNS = ("task", "model", "protocol", "setting", "eval_set", "subgroup", "metric")
_TEXT_COLUMNS = ("task", "modality", "model", "protocol", "setting", "eval_set", "subgroup", "metric")
_RUN_COLUMNS = ["protocol", "model", "setting"]
_LINE_STYLES = ("-", "--", "-.", ":")
REPORT_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; } .figures { display: flex; flex-wrap: wrap; gap: 1em; }
.modality { color: #666; }
"""


@dataclass(frozen=True)
class RocCurve:
    """A curve to draw. ``averaged`` is how many classes (or labels) the macro average spans; 0 for the
    class-1 curve of a binary task. ``auroc`` is the mean of the per-class AUROCs."""

    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float
    averaged: int


@dataclass
class _TaskSection:
    task: str
    slug: str
    modality: str
    main: pd.DataFrame
    extra: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)  # a key of FIGURE_CAPTIONS -> PNG
    per_class: pd.DataFrame = field(default_factory=pd.DataFrame)  # multi-class tasks: the numbers
    confusion: pd.DataFrame = field(default_factory=pd.DataFrame)  # multi-class tasks: long-form counts


def write_report(
    out: str | Path,
    rows: pd.DataFrame,
    predictions: Sequence[Predictions] = (),
    *,
    title: str = "medfm benchmark",
    comparisons: pd.DataFrame | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md``, ``report.html`` and ``figures/*.png`` into ``out``; for
    multi-class tasks also ``per_class.csv`` and ``confusion.csv``.

    Returns every written file by its path relative to ``out`` (``"figures/roc-<task>.png"``, ...).
    Raises ``ValueError`` for empty rows, missing columns or two rows with the same key.
    """
    rows = _checked_rows(rows)
    comparisons = _checked_comparisons(comparisons)
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)

    tasks = list(dict.fromkeys([*rows["task"], *(p.task for p in predictions)]))
    slugs = _unique_slugs(tasks)
    styles = _protocol_styles([*rows["protocol"], *(p.protocol for p in predictions)])
    sections = [
        _task_section(task, slugs[task], rows[rows["task"] == task], predictions, styles, figures)
        for task in tasks
    ]
    tasks_with_rows = list(dict.fromkeys(rows["task"]))
    overview = (
        _draw_overview(rows, tasks_with_rows, figures / "overview.png") if len(tasks_with_rows) >= 2 else None
    )

    paths = {
        "results.csv": out / "results.csv",
        "results.md": out / "results.md",
        "report.html": out / "report.html",
    }
    extra_columns = [c for c in rows.columns if c not in RESULT_COLUMNS]
    rows[[*RESULT_COLUMNS, *extra_columns]].to_csv(paths["results.csv"], index=False)
    for name in ("per_class", "confusion"):
        tables = [getattr(s, name) for s in sections if not getattr(s, name).empty]
        if tables:
            paths[f"{name}.csv"] = out / f"{name}.csv"
            pd.concat(tables).to_csv(paths[f"{name}.csv"], index=False)
    comparison_table = _comparison_table(comparisons)
    paths["results.md"].write_text(
        _markdown_report(title, notes, sections, comparison_table, out), encoding="utf-8"
    )
    paths["report.html"].write_text(
        _html_report(title, notes, sections, comparison_table, overview), encoding="utf-8"
    )
    written = [overview] if overview else []
    written += [path for section in sections for path in section.figures.values()]
    paths.update({path.relative_to(out).as_posix(): path for path in written})
    return paths


def format_estimate(value: float, low: float, high: float, signed: bool = False) -> str:
    """``"0.912 [0.881, 0.940]"``; the value alone when the interval is unknown; ``"–"`` without a value."""
    spec = "+.3f" if signed else ".3f"
    if not np.isfinite(value):
        return MISSING
    if not (np.isfinite(low) and np.isfinite(high)):
        return format(value, spec)
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def format_p_value(p: float) -> str:
    """``"0.003"``, or ``"<0.001"`` below what three decimals can show."""
    if not np.isfinite(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def roc_points(predictions: Predictions) -> RocCurve | None:
    """The ROC of class 1 for a binary task; otherwise the macro-average one-vs-rest curve (mean TPR over
    classes or labels on :data:`FPR_GRID`). Classes whose test examples are all positive or all negative
    have no ROC and are skipped; ``None`` when no class has one."""
    y, prob = predictions.y, predictions.prob
    if predictions.multilabel:
        outcomes = [(y[:, k] > 0, prob[:, k]) for k in range(prob.shape[1])]
    elif prob.shape[1] == 2:
        outcomes = [(y == 1, prob[:, 1])]
    else:
        outcomes = [(y == c, prob[:, c]) for c in range(prob.shape[1])]
    outcomes = [(truth, score) for truth, score in outcomes if 0 < truth.sum() < len(truth)]
    if not outcomes:
        return None
    aurocs = [float(roc_auc_score(truth, score)) for truth, score in outcomes]
    if not predictions.multilabel and prob.shape[1] == 2:
        fpr, tpr, _ = roc_curve(*outcomes[0])
        return RocCurve(fpr=fpr, tpr=tpr, auroc=aurocs[0], averaged=0)
    tprs = []
    for truth, score in outcomes:
        fpr, tpr, _ = roc_curve(truth, score)
        tprs.append(np.interp(FPR_GRID, fpr, tpr))
    mean_tpr = np.mean(tprs, axis=0)
    mean_tpr[0] = 0.0  # every curve starts at the origin; interp at a vertical step could lift it
    return RocCurve(fpr=FPR_GRID, tpr=mean_tpr, auroc=float(np.mean(aurocs)), averaged=len(outcomes))


# --- input checks ------------------------------------------------------------------------------------


def _checked_rows(rows: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in RESULT_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"result rows lack the column(s) {', '.join(missing)}")
    if rows.empty:
        raise ValueError("no result rows to report")
    rows = rows.reset_index(drop=True).copy()
    for column in _TEXT_COLUMNS:
        rows[column] = rows[column].fillna("").astype(str)
    for column in ("value", "ci_low", "ci_high"):
        rows[column] = _numeric(rows[column], f"result column {column!r}")
    duplicated = rows.duplicated(list(_KEY_COLUMNS), keep=False)
    if duplicated.any():
        first = rows.loc[duplicated, list(_KEY_COLUMNS)].iloc[0].to_dict()
        raise ValueError(f"{int(duplicated.sum())} result rows share their key with another, e.g. {first}")
    return rows


def _checked_comparisons(comparisons: pd.DataFrame | None) -> pd.DataFrame | None:
    if comparisons is None:
        return None
    missing = [c for c in COMPARISON_COLUMNS if c not in comparisons.columns]
    if missing:
        raise ValueError(f"comparisons lack the column(s) {', '.join(missing)}")
    comparisons = comparisons.reset_index(drop=True).copy()
    for column in ("value_a", "value_b", "diff", "ci_low", "ci_high", "p_value", "p_holm"):
        comparisons[column] = _numeric(comparisons[column], f"comparison column {column!r}")
    return comparisons


def _numeric(column: pd.Series, name: str) -> pd.Series:
    try:
        return pd.to_numeric(column).astype(float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} is not numeric: {error}") from error


# --- tables --------------------------------------------------------------------------------------------


def _task_section(
    task: str,
    slug: str,
    rows: pd.DataFrame,
    predictions: Sequence[Predictions],
    styles: dict[str, tuple[tuple, str]],
    figures: Path,
) -> _TaskSection:
    modalities = [m for m in rows["modality"] if m]
    main = rows[(rows["eval_set"] == MAIN_EVAL_SET) & (rows["subgroup"] == ALL_SUBJECTS)]
    metrics = _ordered_metrics(main["metric"])
    section = _TaskSection(
        task=task,
        slug=slug,
        modality=modalities[0] if modalities else "",
        main=_estimate_table(main, main["metric"].map(_metric_label), [_metric_label(m) for m in metrics]),
    )
    auroc = rows[rows["metric"] == "auroc"]
    main_auroc = main[main["metric"] == "auroc"]
    other_sets = auroc[(auroc["subgroup"] == ALL_SUBJECTS) & (auroc["eval_set"] != MAIN_EVAL_SET)]
    if not other_sets.empty:
        with_main = pd.concat([main_auroc, other_sets])
        order = [MAIN_EVAL_SET, *sorted(set(other_sets["eval_set"]), key=_natural)]
        section.extra.append(
            ("AUROC on other evaluation sets", _estimate_table(with_main, with_main["eval_set"], order))
        )
    subgroups = auroc[auroc["subgroup"] != ALL_SUBJECTS]
    if not subgroups.empty:
        with_main = pd.concat([main_auroc, subgroups])
        labels = with_main["subgroup"].where(
            with_main["eval_set"] == MAIN_EVAL_SET, with_main["eval_set"] + ": " + with_main["subgroup"]
        )
        order = [ALL_SUBJECTS, *sorted(set(labels) - {ALL_SUBJECTS}, key=_natural)]
        section.extra.append(("AUROC by subgroup", _estimate_table(with_main, labels, order)))

    if not main_auroc.empty:
        section.figures["bars"] = _draw_bars(task, main_auroc, styles, figures / f"bars-{slug}.png")
    roc_path = _draw_roc(
        task, [p for p in predictions if p.task == task], styles, figures / f"roc-{slug}.png"
    )
    if roc_path:
        section.figures["roc"] = roc_path
    multiclass = [p for p in predictions if p.task == task and not p.multilabel and len(p.classes) > 2]
    if multiclass:
        section.per_class = per_class_metrics(multiclass)
        section.confusion = confusion_counts(multiclass)
        shown = section.per_class.drop(columns="task").assign(
            **{c: section.per_class[c].map(lambda v: format_estimate(v, np.nan, np.nan)) for c in _PER_CLASS}
        )
        section.extra.append(("Per class (one-vs-rest, test set)", shown))
        section.figures["confusion"] = _draw_confusions(task, multiclass, figures / f"confusion-{slug}.png")
    return section


_PER_CLASS = ("precision", "recall", "f1", "auroc")


def per_class_metrics(predictions: Sequence[Predictions]) -> pd.DataFrame:
    """Per run and class of single-label predictions: test examples of the class (``n``), precision,
    recall (sensitivity), F1 and one-vs-rest AUROC (NaN when the class has no test example)."""
    rows = []
    for pred in predictions:
        classes = np.arange(len(pred.classes))
        predicted = pred.prob.argmax(axis=1)
        precision, recall, f1, support = precision_recall_fscore_support(
            pred.y, predicted, labels=classes, zero_division=0
        )
        for c, name in enumerate(pred.classes):
            truth = pred.y == c
            auroc = roc_auc_score(truth, pred.prob[:, c]) if 0 < truth.sum() < len(truth) else np.nan
            rows.append(
                {
                    "task": pred.task,
                    "model": pred.model,
                    "protocol": pred.protocol,
                    "class": name,
                    "n": int(support[c]),
                    "precision": precision[c],
                    "recall": recall[c],
                    "f1": f1[c],
                    "auroc": float(auroc),
                }
            )
    return pd.DataFrame(rows)


def confusion_counts(predictions: Sequence[Predictions]) -> pd.DataFrame:
    """Long-form confusion matrices: per run, true class and predicted class, the test examples."""
    rows = []
    for pred in predictions:
        matrix = confusion_matrix(pred.y, pred.prob.argmax(axis=1), labels=np.arange(len(pred.classes)))
        for (i, j), count in np.ndenumerate(matrix):
            true, predicted = pred.classes[i], pred.classes[j]
            rows.append(
                {
                    "task": pred.task,
                    "model": pred.model,
                    "protocol": pred.protocol,
                    "true": true,
                    "predicted": predicted,
                    "count": int(count),
                }
            )
    return pd.DataFrame(rows)


def _estimate_table(rows: pd.DataFrame, column_labels: pd.Series, order: list[str]) -> pd.DataFrame:
    """One line per (model, protocol, setting), sorted by protocol then model; one column per label."""
    if rows.empty:
        return pd.DataFrame()
    cells = rows[_RUN_COLUMNS].assign(
        column=column_labels.to_numpy(),
        cell=[format_estimate(*v) for v in rows[["value", "ci_low", "ci_high"]].to_numpy()],
    )
    table = cells.pivot(index=_RUN_COLUMNS, columns="column", values="cell").reindex(columns=order)
    table = table.loc[sorted(table.index, key=lambda run: tuple(map(_natural, run)))].fillna(MISSING)
    table = table.reset_index()[["model", "protocol", "setting", *order]]
    table.columns.name = None
    return table if table["setting"].str.len().any() else table.drop(columns="setting")


def _comparison_table(comparisons: pd.DataFrame | None) -> pd.DataFrame:
    if comparisons is None or comparisons.empty:
        return pd.DataFrame()
    c = comparisons
    return pd.DataFrame(
        {
            "task": c["task"].astype(str),
            "protocol": c["protocol"].astype(str),
            "metric": c["metric"].astype(str).map(_metric_label),
            "model A": c["model_a"].astype(str),
            "model B": c["model_b"].astype(str),
            "A": [format_estimate(v, np.nan, np.nan) for v in c["value_a"]],
            "B": [format_estimate(v, np.nan, np.nan) for v in c["value_b"]],
            "A − B [95 % CI]": [
                format_estimate(*v, signed=True) for v in c[["diff", "ci_low", "ci_high"]].to_numpy()
            ],
            "p": [format_p_value(p) for p in c["p_value"]],
            "p (Holm)": [format_p_value(p) for p in c["p_holm"]],
        }
    )


def _ordered_metrics(metrics: pd.Series) -> list[str]:
    present = set(metrics)
    return [m for m in METRIC_LABELS if m in present] + sorted(present - set(METRIC_LABELS))


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _natural(text: str) -> tuple:
    """Sort key that puts "k=5" before "k=10"."""
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", text)))


def _run_label(model: str, protocol: str, setting: str) -> str:
    return " · ".join(part for part in (model, protocol, setting) if part)


def _unique_slugs(tasks: list[str]) -> dict[str, str]:
    slugs: dict[str, str] = {}
    for task in tasks:
        base = re.sub(r"[^a-z0-9._]+", "-", task.lower())[:80].strip("-.") or "task"
        slug, n = base, 1
        while slug in slugs.values():  # two names may differ only in characters the slug drops
            n += 1
            slug = f"{base}-{n}"
        slugs[task] = slug
    return slugs


# --- figures -------------------------------------------------------------------------------------------


def _protocol_styles(protocols: list[str]) -> dict[str, tuple[tuple, str]]:
    """One (colour, line style) per protocol, the same in every figure of the report."""
    ordered = sorted(set(protocols), key=_natural)
    colours = _distinct_colours(len(ordered))
    return {p: (colours[i], _LINE_STYLES[i % len(_LINE_STYLES)]) for i, p in enumerate(ordered)}


def _distinct_colours(n: int) -> list[tuple]:
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    return [tuple(c) for c in colormaps["turbo"](np.linspace(0.05, 0.95, n))]


def _wrapped(text: str, width: int = 60) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _draw_roc(
    task: str, predictions: list[Predictions], styles: dict[str, tuple[tuple, str]], path: Path
) -> Path | None:
    runs = sorted(predictions, key=lambda p: tuple(map(_natural, (p.protocol, p.model, p.setting))))
    curves = [(p, curve) for p in runs if (curve := roc_points(p)) is not None]
    if not curves:
        return None
    figure = Figure(figsize=(8.5, 5.2), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    colours = _distinct_colours(len(curves))
    for (run, curve), colour in zip(curves, colours):
        label = f"{_run_label(run.model, run.protocol, run.setting)}  (AUROC {curve.auroc:.3f})"
        ax.plot(
            curve.fpr, curve.tpr, color=colour, linestyle=styles[run.protocol][1], linewidth=1.5, label=label
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    first, first_curve = curves[0]
    if first_curve.averaged:
        kind = f"macro-average one-vs-rest ROC ({'labels' if first.multilabel else 'classes'})"
    else:
        kind = f"ROC of class “{first.classes[1]}”"
    ax.set_title(f"{_wrapped(task)}\n{kind}", fontsize=10)
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return _save(figure, path)


def _draw_bars(task: str, auroc: pd.DataFrame, styles: dict[str, tuple[tuple, str]], path: Path) -> Path:
    """AUROC per run with its interval, bars starting at chance so that length is skill over chance."""
    runs = auroc.loc[sorted(auroc.index, key=lambda i: tuple(map(_natural, auroc.loc[i, _RUN_COLUMNS])))]
    values, low, high = (runs[c].to_numpy(dtype=float) for c in ("value", "ci_low", "ci_high"))
    # a few-shot range need not contain its point value; matplotlib refuses negative error lengths
    errors = np.clip(np.vstack([values - low, high - values]), 0, None)
    y = np.arange(len(runs))
    figure = Figure(figsize=(8.0, 1.4 + 0.32 * len(runs)), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    ax.barh(
        y,
        values - CHANCE_AUROC,
        left=CHANCE_AUROC,
        height=0.7,
        color=[styles[p][0] for p in runs["protocol"]],
        xerr=errors,
        error_kw={"ecolor": "black", "capsize": 3, "elinewidth": 1},
    )
    shown = np.concatenate([values, low])
    lowest = np.nanmin(shown) if np.isfinite(shown).any() else CHANCE_AUROC
    left = min(CHANCE_AUROC, np.floor(lowest * 20) / 20)  # only below-chance runs widen the axis
    for row, value in zip(y, values):
        if not np.isfinite(value):
            ax.text(CHANCE_AUROC + 0.005, row, "no value", va="center", fontsize=8, color="grey")
    ax.axvline(CHANCE_AUROC, color="grey", linestyle=":", linewidth=1)
    labels = [_run_label(*run) for run in runs[["model", "protocol", "setting"]].itertuples(index=False)]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(runs) - 0.5, -0.5)  # first run on top, like the table
    ax.set_xlim(left, 1.0)
    ax.set_xlabel("AUROC on the test set (95 % CI; dotted line: chance)")
    ax.set_title(_wrapped(task), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    protocols = list(dict.fromkeys(runs["protocol"]))
    ax.legend(
        handles=[Patch(color=styles[p][0], label=p) for p in protocols],
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
        fontsize=8,
        frameon=False,
        title="protocol",
    )
    return _save(figure, path)


def _draw_confusions(task: str, predictions: Sequence[Predictions], path: Path) -> Path:
    """One confusion matrix per run: cells coloured by the share of the true class (recall on the
    diagonal), annotated with counts."""
    runs = sorted(predictions, key=lambda p: tuple(map(_natural, (p.protocol, p.model, p.setting))))
    classes = runs[0].classes
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    side = 1.2 + 0.45 * len(classes)
    figure = Figure(figsize=(columns * side + 1.0, rows * side + 0.8), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    cmap = colormaps["Blues"]
    for ax, run in zip(axes.ravel(), runs):
        counts = confusion_matrix(run.y, run.prob.argmax(axis=1), labels=np.arange(len(classes)))
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(shares, cmap=cmap, vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(counts):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shares[i, j] > 0.5 else "black",
            )
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=40, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_yticks(ticks, classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(_wrapped(_run_label(run.model, run.protocol, run.setting), 30), fontsize=8)
    for ax in axes.ravel()[len(runs) :]:
        ax.set_visible(False)
    figure.colorbar(image, ax=axes, label="share of the true class", shrink=0.8)
    figure.suptitle(f"{_wrapped(task)}: confusion matrices on the test set", fontsize=10)
    return _save(figure, path)


def _draw_overview(rows: pd.DataFrame, tasks: list[str], path: Path) -> Path:
    """Heatmap of test-set AUROC: one row per task, one column per (model, protocol, setting)."""
    auroc = rows[
        (rows["metric"] == "auroc") & (rows["eval_set"] == MAIN_EVAL_SET) & (rows["subgroup"] == ALL_SUBJECTS)
    ]
    runs = sorted(
        set(auroc[_RUN_COLUMNS].itertuples(index=False, name=None)), key=lambda run: tuple(map(_natural, run))
    )
    matrix = np.full((len(tasks), len(runs)), np.nan)
    task_index = {t: i for i, t in enumerate(tasks)}
    run_index = {r: j for j, r in enumerate(runs)}
    for row in auroc.itertuples(index=False):
        matrix[task_index[row.task], run_index[(row.protocol, row.model, row.setting)]] = row.value

    figure = Figure(
        figsize=(max(6.0, 3.5 + 0.7 * len(runs)), 1.8 + 0.45 * len(tasks)), dpi=DPI, layout="constrained"
    )
    ax = figure.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=CHANCE_AUROC, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            red, green, blue, _ = cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(
                j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, color="white" if dark else "black"
            )
    run_labels = [_run_label(model, protocol, setting) for protocol, model, setting in runs]
    ax.set_xticks(range(len(runs)), run_labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(tasks)), [_wrapped(t, 40) for t in tasks], fontsize=8)
    ax.set_title("AUROC on the test set (all subjects)", fontsize=10)
    figure.colorbar(image, ax=ax, label="AUROC", shrink=0.8)
    return _save(figure, path)


# --- documents -----------------------------------------------------------------------------------------


def _markdown_report(
    title: str, notes: Sequence[str], sections: list[_TaskSection], comparisons: pd.DataFrame, out: Path
) -> str:
    lines = [f"# {title}", ""]
    if notes:
        lines += [*(f"- {note}" for note in notes), ""]
    for section in sections:
        lines += [f"## {section.task}", ""]
        if section.modality:
            lines += [f"Modality: {section.modality}", ""]
        if not section.main.empty:
            lines += ["### Test set, all subjects", "", markdown_table(section.main), ""]
        for heading, table in section.extra:
            lines += [f"### {heading}", "", markdown_table(table), ""]
        for name, path in section.figures.items():
            lines += [f"![{FIGURE_CAPTIONS[name]}]({path.relative_to(out).as_posix()})", ""]
    if not comparisons.empty:
        lines += ["## Paired comparisons", "", markdown_table(comparisons), ""]
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(cell, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _html_report(
    title: str,
    notes: Sequence[str],
    sections: list[_TaskSection],
    comparisons: pd.DataFrame,
    overview: Path | None,
) -> str:
    esc = html.escape
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{esc(title)}</title>\n<style>{REPORT_CSS}</style>\n</head>\n<body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>")
    parts.append(
        "<nav><ul>"
        + "".join(f'<li><a href="#task-{esc(s.slug)}">{esc(s.task)}</a></li>' for s in sections)
        + "</ul></nav>"
    )
    if overview:
        parts += ["<h2>Overview</h2>", html_image(overview, "AUROC per task and model (heatmap)")]
    if not comparisons.empty:
        parts += ["<h2>Paired comparisons</h2>", html_table(comparisons)]
    for section in sections:
        parts.append(f'<section id="task-{esc(section.slug)}">\n<h2>{esc(section.task)}</h2>')
        if section.modality:
            parts.append(f'<p class="modality">Modality: {esc(section.modality)}</p>')
        if not section.main.empty:
            parts += ["<h3>Test set, all subjects</h3>", html_table(section.main)]
        images = [
            html_image(path, f"{FIGURE_CAPTIONS[name]}: {section.task}")
            for name, path in section.figures.items()
        ]
        if images:
            parts.append('<div class="figures">' + "".join(images) + "</div>")
        for heading, table in section.extra:
            parts += [f"<h3>{esc(heading)}</h3>", html_table(table)]
        parts.append("</section>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, na_rep=MISSING)


def html_image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
