"""Figures of the scaling study: metric against model size, data and compute, the pretraining loss
frontier, and how the fitted exponents vary with dataset factors.

Inputs are the study's tables (``points``, ``runs``, ``fits``, ``frontier``, ``frontier_fits``,
``factors``, ``slope_factors``; see :mod:`medfm.scale.fit`). Metrics, losses, sizes and compute sit on
log axes, where the fitted power laws are straight lines; their tick labels stay plain decimals (0.80,
0.85) or counts with SI prefixes (20k, 5M) rather than powers of ten. Figures are
:class:`matplotlib.figure.Figure` objects, not pyplot, so drawing them neither needs nor changes the
caller's matplotlib backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medfm.evaluate.report import (
    _LINE_STYLES,
    DPI,
    MISSING,
    _distinct_colours,
    _metric_label,
    _natural,
    _save,
    format_estimate,
    format_p_value,
)

FACTORS = ("n_classes", "n_train", "gzip_ratio", "davies_bouldin")
LOG_FACTORS = frozenset({"n_train"})
SYMBOLS = {"parameters": "b_params", "pictures": "b_pictures", "train_flops": "b_flops"}
AXIS_LABELS = {
    "parameters": "encoder parameters",
    "pictures": "pretraining pictures",
    "train_flops": "pretraining FLOPs",
}
_MARKERS = ("o", "s", "^", "D", "v", "P")
_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))

Fit = dict[str, pd.Series]  # one fitted law of one group: its ``fits`` rows keyed by variable


# --- log axes -------------------------------------------------------------------------------------------


class _LogTicks(ticker.LogLocator):
    """Major ticks of a log axis that suit its span: linear steps within a decade (0.80, 0.85, 0.90),
    1-2-5 steps over a few decades, powers of ten beyond."""

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((vmin, vmax))
        if vmin <= 0:
            return super().tick_values(vmin, vmax)
        decades = math.log10(vmax / vmin)
        if decades < 1:
            ticks = ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
            return ticks[ticks > 0]
        if decades < 2.5:
            return ticker.LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(vmin, vmax)
        return super().tick_values(vmin, vmax)


class _Decimals(ticker.Formatter):
    """Tick labels as decimals with the places the ticks need, at least two when all are at most 1."""

    def __call__(self, x, pos=None):
        return self.format_ticks([x])[0]

    def format_ticks(self, values):
        values = np.asarray(values, dtype=float)
        least = 2 if len(values) and values.max() <= 1 else 0
        places = next((p for p in range(least, 7) if np.allclose(values, values.round(p), rtol=1e-9)), 6)
        return [f"{v:.{places}f}" for v in values]


def count_label(value: float) -> str:
    """A count with an SI prefix: ``"512"``, ``"20k"``, ``"1.5M"``, ``"3G"``."""
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale * (1 - 5e-4):  # 999_999 reads "1M", not "1e+03k"
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def log_axis(ax: Axes, which: str = "x", counts: bool = False) -> None:
    """Put the ``which`` ("x" or "y") axis of ``ax`` on a log scale with readable labels: SI-prefixed
    counts (``counts=True``: parameters, pictures, FLOPs) or plain decimals (metrics, losses)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(_LogTicks())
    axis.set_minor_formatter(ticker.NullFormatter())
    if counts:
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: count_label(v)))
    else:
        axis.set_major_formatter(_Decimals())
        axis.set_minor_locator(ticker.NullLocator())  # decades' minor ticks would fall between 0.80, 0.85


# --- tables ---------------------------------------------------------------------------------------------


def _rows(table: pd.DataFrame, **keys) -> pd.DataFrame:
    """The rows of ``table`` whose columns equal ``keys``."""
    keep = np.ones(len(table), dtype=bool)
    for column, value in keys.items():
        keep &= (table[column] == value).to_numpy()
    return table[keep]


def _positive(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Rows a log axis can show: every named column finite and above 0."""
    keep = np.ones(len(table), dtype=bool)
    for column in columns:
        keep &= (table[column].astype(float) > 0).to_numpy() & np.isfinite(table[column].astype(float))
    return table[keep]


def _groups(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (method, mix) pairs present, in natural order."""
    pairs = set(zip(table["method"], table["mix"]))
    return sorted(pairs, key=lambda pair: (_natural(str(pair[0])), _natural(str(pair[1]))))


def _models(table: pd.DataFrame) -> list[str]:
    """Model names ordered by parameters (then name)."""
    sizes = table.groupby("model")["parameters"].first()
    return sorted(sizes.index, key=lambda model: (sizes[model], _natural(str(model))))


def _law(fits: pd.DataFrame, law: str, **keys) -> Fit:
    """One group's fitted law: its rows keyed by variable; empty when the group has no fit."""
    return {row["variable"]: row for _, row in _rows(fits, law=law, **keys).iterrows()}


def power_law(fit: Fit, **values: np.ndarray) -> np.ndarray | None:
    """exp(intercept + sum of exponent * log value) over the given variables; a variable the fit lacks
    (dropped for taking a single value) counts with exponent 0. None without a usable fit."""
    if not fit:
        return None
    shape = np.broadcast_shapes(*(np.shape(x) for x in values.values()))
    log_value = np.full(shape, float(next(iter(fit.values()))["intercept"]))
    for variable, x in values.items():
        if variable in fit:
            log_value = log_value + float(fit[variable]["exponent"]) * np.log(np.asarray(x, dtype=float))
    return np.exp(log_value) if np.all(np.isfinite(log_value)) else None


# --- text -----------------------------------------------------------------------------------------------


def estimate_text(value: float, low: float, high: float) -> str:
    """``"0.021 [0.010, 0.032]"``; ``"0.021 [–, –]"`` when the interval is unknown; ``"–"`` without a
    value."""
    value, low, high = float(value), float(low), float(high)
    if np.isfinite(value) and not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.3f} [{MISSING}, {MISSING}]"
    return format_estimate(value, low, high)


def exponent_text(fit: Fit, variable: str) -> str:
    """``"b_params = 0.021 [0.010, 0.032]"``, or ``"b_params = –"`` when the fit lacks the variable."""
    row = fit.get(variable)
    estimate = MISSING if row is None else estimate_text(row["exponent"], row["ci_low"], row["ci_high"])
    return f"{SYMBOLS.get(variable, 'b_' + variable)} = {estimate}"


def _number(value: float, spec: str) -> str:
    value = float(value)
    return format(value, spec) if np.isfinite(value) else MISSING


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g} % of corpus"


def _fit_note(ax: Axes, fit: Fit, variable: str) -> None:
    """The exponent of ``variable`` with its interval, R² and n, in a box at the panel's top left."""
    if fit:
        first = next(iter(fit.values()))
        lines = [
            exponent_text(fit, variable),
            f"R² = {_number(first['r2'], '.2f')}, n = {_number(first['n'], '.0f')}",
        ]
    else:
        lines = ["no fit"]
    ax.text(
        0.03,
        0.97,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=7.5,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.85},
    )


# --- drawing helpers ------------------------------------------------------------------------------------


def _sequential(keys: list, name: str) -> dict:
    """A colour per ordered key along a sequential colormap (small to large)."""
    return dict(zip(keys, colormaps[name](np.linspace(0.05, 0.8, len(keys)))))


def _errors(rows: pd.DataFrame, value: str = "value") -> np.ndarray:
    """Error bar lengths below and above each value; NaN (no bar) where the interval is unknown."""
    centre = rows[value].to_numpy(dtype=float)
    low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    return np.clip(np.vstack([centre - low, high - centre]), 0, None)


def _dodged(x: np.ndarray, index: int, count: int, span: float | None = None) -> np.ndarray:
    """``x`` moved so that ``count`` series sharing x values sit side by side: a fiftieth of a decade
    apart on a log axis (``span`` None), a fiftieth of ``span`` apart on a linear one."""
    shift = (index - (count - 1) / 2) * 0.02
    return x * 10**shift if span is None else x + shift * span


def _key(colour, label: str, marker: str = "o", linestyle: str = "-", size: float = 4.0) -> Line2D:
    """A legend entry: the marker of the points and the style of the line drawn in ``colour``."""
    return Line2D([], [], color=colour, marker=marker, linestyle=linestyle, markersize=size, label=label)


def _panel_grid(count: int, columns: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` panels wrapped into at most ``columns`` columns."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), dpi=DPI, layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in panels[count:]:
        ax.remove()
    return figure, list(panels[:count])


def _draw_series(ax: Axes, rows: pd.DataFrame, by: str, colours: dict, x: str, held: str, fit: Fit) -> None:
    """One series per key of ``by`` (points with intervals, dodged apart), each with the joint law drawn
    along ``x`` at the series' own value of ``held``."""
    span = np.geomspace(rows[x].min(), rows[x].max(), 60)
    for index, (key, colour) in enumerate(colours.items()):
        series = rows[rows[by] == key].sort_values(x)
        if series.empty:
            continue
        ax.errorbar(
            _dodged(series[x].to_numpy(dtype=float), index, len(colours)),
            series["value"],
            yerr=_errors(series),
            fmt="o",
            markersize=4,
            color=colour,
            elinewidth=0.8,
            capsize=2,
            zorder=3,
        )
        line = power_law(fit, **{x: span, held: series[held].median()})
        if line is not None:
            ax.plot(span, line, color=colour, linewidth=1.2, zorder=2)
    _fit_note(ax, fit, x)
    log_axis(ax, "x", counts=True)
    log_axis(ax, "y")
    ax.grid(alpha=0.3)


# --- figures --------------------------------------------------------------------------------------------


def draw_scaling_curves(points: pd.DataFrame, fits: pd.DataFrame, task: str, metric: str, path: Path) -> Path:
    """One task's metric against model size (top row, a colour per data fraction) and against the
    pictures seen in pretraining (bottom row, a colour per model), one column per (method, mix), with
    the joint law log(value) = a + b_params log P + b_pictures log D drawn through every series."""
    data = _positive(_rows(points, task=task, metric=metric), "value", "parameters", "pictures")
    if data.empty:
        raise ValueError(f"no points of task {task!r} and metric {metric!r}")
    groups = _groups(data)
    fraction_colours = _sequential(sorted(data["fraction"].unique()), "viridis")
    model_colours = _sequential(_models(data), "plasma")
    figure = Figure(figsize=(1.8 + 3.3 * len(groups), 6.4), dpi=DPI, layout="constrained")
    panels = figure.subplots(2, len(groups), sharex="row", sharey=True, squeeze=False)
    for column, (method, mix) in enumerate(groups):
        rows = _rows(data, method=method, mix=mix)
        fit = _law(fits, "joint", task=task, method=method, mix=mix, metric=metric)
        top, bottom = panels[:, column]
        _draw_series(top, rows, "fraction", fraction_colours, "parameters", "pictures", fit)
        _draw_series(bottom, rows, "model", model_colours, "pictures", "parameters", fit)
        top.set_title(f"{method} · {mix}")
        top.set_xlabel(AXIS_LABELS["parameters"])
        bottom.set_xlabel(AXIS_LABELS["pictures"])
    for ax in panels[:, 0]:
        ax.set_ylabel(f"test {_metric_label(metric)} (linear probe)")
    sizes = data.groupby("model")["parameters"].first()
    legends = (
        (panels[0, -1], "pretraining data", [_key(c, _percent(f)) for f, c in fraction_colours.items()]),
        (
            panels[1, -1],
            "model",
            [_key(c, f"{m} ({count_label(sizes[m])})") for m, c in model_colours.items()],
        ),
    )
    for ax, title, handles in legends:
        ax.legend(
            handles=handles,
            title=title,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            fontsize=8,
            frameon=False,
        )
    figure.suptitle(f"{task}: {_metric_label(metric)} against model size and data (lines: joint power law)")
    return _save(figure, path)


def draw_compute_curves(points: pd.DataFrame, fits: pd.DataFrame, metric: str, path: Path) -> Path:
    """Metric against pretraining compute, one panel per task: a colour per method (a marker and line
    style per mix when there are several), with the single law log(value) = a + b log C per (method,
    mix) and its exponent in the legend."""
    data = _positive(_rows(points, metric=metric), "value", "train_flops")
    if data.empty:
        raise ValueError(f"no points of metric {metric!r}")
    tasks = sorted(data["task"].unique(), key=lambda t: _natural(str(t)))
    methods = sorted(data["method"].unique(), key=lambda m: _natural(str(m)))
    mixes = sorted(data["mix"].unique(), key=lambda m: _natural(str(m)))
    colours = dict(zip(methods, _distinct_colours(len(methods))))
    figure, panels = _panel_grid(len(tasks), 3, (4.3, 3.6))
    for ax, task in zip(panels, tasks):
        rows = _rows(data, task=task)
        handles = []
        for method, mix in _groups(rows):
            series = _rows(rows, method=method, mix=mix).sort_values("train_flops")
            span = np.geomspace(
                series["train_flops"].min(), series["train_flops"].max(), 60
            )  # no extrapolation
            style = mixes.index(mix)
            marker, linestyle = _MARKERS[style % len(_MARKERS)], _LINE_STYLES[style % len(_LINE_STYLES)]
            ax.errorbar(
                series["train_flops"],
                series["value"],
                yerr=_errors(series),
                fmt=marker,
                markersize=4,
                color=colours[method],
                alpha=0.8,
                elinewidth=0.8,
                capsize=2,
                zorder=3,
            )
            fit = _law(fits, "single", task=task, method=method, mix=mix, metric=metric)
            line = power_law(fit, train_flops=span)
            if line is not None:
                ax.plot(span, line, color=colours[method], linestyle=linestyle, linewidth=1.2, zorder=2)
            name = f"{method} · {mix}" if len(mixes) > 1 else method
            text = exponent_text(fit, "train_flops") if fit else f"{SYMBOLS['train_flops']}: no fit"
            handles.append(
                _key(colours[method], f"{name}: {text}", marker, linestyle if line is not None else "none")
            )
        log_axis(ax, "x", counts=True)
        log_axis(ax, "y")
        ax.grid(alpha=0.3)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(AXIS_LABELS["train_flops"])
        ax.set_ylabel(f"test {_metric_label(metric)}")
        ax.legend(handles=handles, loc="best", fontsize=7)
    figure.suptitle(f"{_metric_label(metric)} against pretraining compute (lines: power law in FLOPs)")
    return _save(figure, path)


def draw_loss_frontier(
    frontier: pd.DataFrame, frontier_fits: pd.DataFrame, runs: pd.DataFrame, path: Path
) -> Path:
    """Held-out pretraining loss against compute, one panel per (method, mix), each on its own y axis
    since losses of different methods are not comparable: every run (colour: model, size: data
    fraction), the compute frontier as a line and the power law fitted to it dashed."""
    data = _positive(runs, "train_flops", "heldout_loss")
    if data.empty:
        raise ValueError("no run has a positive held-out loss and FLOPs count")
    groups = _groups(data)
    model_colours = _sequential(_models(data), "plasma")
    fractions = sorted(data["fraction"].unique())
    sizes = dict(zip(fractions, np.linspace(14, 80, len(fractions))))
    figure, panels = _panel_grid(len(groups), 3, (4.4, 3.6))
    for ax, (method, mix) in zip(panels, groups):
        rows = _rows(data, method=method, mix=mix)
        ax.scatter(
            rows["train_flops"],
            rows["heldout_loss"],
            c=[model_colours[m] for m in rows["model"]],
            s=[sizes[f] for f in rows["fraction"]],
            alpha=0.85,
            edgecolors="white",
            linewidths=0.5,
            zorder=3,
        )
        edge = _rows(frontier, method=method, mix=mix)
        edge = _positive(edge[edge["on_frontier"].astype(bool)], "train_flops", "heldout_loss")
        edge = edge.sort_values("train_flops")
        ax.plot(edge["train_flops"], edge["heldout_loss"], color="0.25", linewidth=1.2, zorder=2)
        handles = [_key("0.25", "compute frontier", "none")]
        fit = _rows(frontier_fits, method=method, mix=mix)
        if len(fit):
            row = fit.iloc[0]
            exponent, intercept = float(row["exponent"]), float(row["intercept"])
            label = f"loss ∝ C^b, b = {estimate_text(exponent, row['ci_low'], row['ci_high'])}"
            if np.isfinite(exponent) and np.isfinite(intercept):
                span = np.geomspace(rows["train_flops"].min(), rows["train_flops"].max(), 60)
                ax.plot(span, np.exp(intercept) * span**exponent, color="0.25", linestyle="--", linewidth=1.2)
            handles.append(_key("0.25", label, "none", "--"))
        else:
            handles.append(_key("0.25", "frontier fit: " + MISSING, "none", "none"))
        log_axis(ax, "x", counts=True)
        log_axis(ax, "y")
        ax.grid(alpha=0.3)
        ax.set_title(f"{method} · {mix}", fontsize=10)
        ax.set_xlabel(AXIS_LABELS["train_flops"])
        ax.set_ylabel(f"held-out {method} loss")
        ax.legend(handles=handles, loc="upper right", fontsize=7)
    sizes_by_model = data.groupby("model")["parameters"].first()
    model_keys = [
        _key(c, f"{m} ({count_label(sizes_by_model[m])})", linestyle="none") for m, c in model_colours.items()
    ]
    fraction_keys = [_key("0.5", _percent(f), linestyle="none", size=math.sqrt(s)) for f, s in sizes.items()]
    figure.legend(handles=model_keys, title="model", loc="outside right upper", fontsize=8, frameon=False)
    figure.legend(handles=fraction_keys, title="data", loc="outside right lower", fontsize=8, frameon=False)
    figure.suptitle("Held-out pretraining loss against compute")
    return _save(figure, path)


def draw_slope_factors(
    fits: pd.DataFrame,
    factors: pd.DataFrame,
    slope_factors: pd.DataFrame,
    path: Path,
    variable: str = "parameters",
    metric: str | None = None,
) -> Path:
    """Each task's exponent of ``variable`` (joint law; the single law for ``train_flops``) with its
    interval against each dataset factor, a colour per (method, mix), Spearman's rho per (method, mix)
    in the panel titles. ``metric`` picks the fits' metric; it may be left out when they hold one."""
    law = "single" if variable == "train_flops" else "joint"
    chosen = _rows(fits, law=law, variable=variable)
    if metric is not None:
        chosen = _rows(chosen, metric=metric)
    elif chosen["metric"].nunique() > 1:
        raise ValueError(
            f"fits hold several metrics ({', '.join(sorted(chosen['metric'].unique()))}): pass metric"
        )
    names = [factor for factor in FACTORS if factor in factors.columns]
    data = chosen.merge(factors[["task", *names]], on="task")
    if data.empty or not names:
        raise ValueError(f"no {law} fits of {variable!r} for tasks with dataset factors")
    groups = _groups(data)
    colours = dict(zip(groups, _distinct_colours(len(groups))))
    figure, panels = _panel_grid(len(names), 2, (4.6, 3.8))
    for ax, factor in zip(panels, names):
        shown = data[np.isfinite(data[factor].astype(float)) & np.isfinite(data["exponent"].astype(float))]
        if factor in LOG_FACTORS:
            shown = _positive(shown, factor)
        span = None if factor in LOG_FACTORS else float(np.ptp(shown[factor])) or 1.0
        placed = []  # (task, x, y) of every point, to label each task once
        titles = [factor]
        for index, (method, mix) in enumerate(groups):
            rows = _rows(shown, method=method, mix=mix)
            x = _dodged(rows[factor].to_numpy(dtype=float), index, len(groups), span)
            ax.errorbar(
                x,
                rows["exponent"],
                yerr=_errors(rows, "exponent"),
                fmt=_MARKERS[index % len(_MARKERS)],
                markersize=4.5,
                color=colours[(method, mix)],
                elinewidth=0.8,
                capsize=2,
                linestyle="none",
                label=f"{method} · {mix}",
                zorder=3,
            )
            placed += zip(rows["task"], x, rows["exponent"])
            rho = _rows(slope_factors, method=method, mix=mix, variable=variable, factor=factor)
            text = MISSING
            if len(rho):
                row = rho.iloc[0]
                p = format_p_value(float(row["spearman_p"]))
                holm = format_p_value(float(row["spearman_p_holm"]))
                text = f"{_number(row['spearman_rho'], '.2f')} (p = {p}, Holm {holm}, {row['tasks']} tasks)"
            titles.append(f"{method} · {mix}: Spearman ρ = {text}")
        for task, x, y in (
            pd.DataFrame(placed, columns=["task", "x", "y"])
            .sort_values("y")
            .groupby("task")
            .last()
            .itertuples()
        ):
            ax.annotate(task, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=6.5, color="0.3")
        ax.axhline(0, color="0.4", linewidth=0.8, linestyle=":", zorder=1)
        if factor in LOG_FACTORS:
            log_axis(ax, "x", counts=True)
        ax.grid(alpha=0.3)
        ax.set_title("\n".join(titles), fontsize=8)
        ax.set_xlabel(factor)
        ax.set_ylabel(f"{SYMBOLS.get(variable, variable)} ({law} law)")
    panels[0].legend(loc="best", fontsize=7)
    metric_name = _metric_label(data["metric"].iloc[0])
    figure.suptitle(f"Exponent of {variable} ({metric_name}) against dataset factors, one point per task")
    return _save(figure, path)


def draw_exponents(fits: pd.DataFrame, path: Path) -> Path:
    """Every task's exponents side by side, one panel per variable (parameters and pictures from the
    joint law, training FLOPs from the single law), a row per task and a colour per (method, mix): the
    thin bar is the t-interval over the runs, the thick one the test-patient bootstrap when present."""
    panels_of = [("joint", "parameters"), ("joint", "pictures"), ("single", "train_flops")]
    panels_of = [(law, v) for law, v in panels_of if len(_rows(fits, law=law, variable=v))]
    if not panels_of:
        raise ValueError("no fitted exponents to draw")
    tasks = sorted(fits["task"].unique(), key=_natural)
    groups = _groups(fits)
    colours = dict(zip(groups, _distinct_colours(len(groups))))
    figure, panels = _panel_grid(len(panels_of), 3, (3.6, 0.6 * len(tasks) + 2.4))
    for ax, (law, variable) in zip(panels, panels_of):
        rows = _rows(fits, law=law, variable=variable)
        for index, (method, mix) in enumerate(groups):
            group = _rows(rows, method=method, mix=mix)
            y = np.array([tasks.index(t) for t in group["task"]]) + (index - (len(groups) - 1) / 2) * 0.25
            colour = colours[(method, mix)]
            ax.errorbar(
                group["exponent"],
                y,
                xerr=_errors(group, "exponent"),
                fmt=_MARKERS[index % len(_MARKERS)],
                color=colour,
                markersize=4.5,
                elinewidth=0.8,
                capsize=2,
                label=f"{method} · {mix}",
                zorder=3,
            )
            if {"boot_low", "boot_high"} <= set(group.columns):
                ax.hlines(y, group["boot_low"], group["boot_high"], color=colour, linewidth=3, alpha=0.45)
        ax.axvline(0, color="0.4", linewidth=0.8, linestyle=":")
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_ylim(len(tasks) - 0.5, -0.5)
        ax.set_xlabel(f"{SYMBOLS.get(variable, variable)} ({law} law)")
        ax.set_title(AXIS_LABELS.get(variable, variable), fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    panels[-1].legend(loc="best", fontsize=7)
    metric_name = _metric_label(fits["metric"].iloc[0])
    figure.suptitle(
        f"Scaling exponents of {metric_name} per task (thin: t-interval; thick: patient bootstrap)"
    )
    return _save(figure, path)
