"""Figures of a continual-learning run: the result matrix as a heatmap, each experience's score along the
stream for several strategies, and average accuracy and forgetting per strategy.

Inputs are result matrices ``R`` (``R[i, j]``: score on experience ``j`` after training on experiences
``0..i``; see :mod:`medfm.continual.metrics`) and their :func:`~medfm.continual.metrics.summarise` dicts.
NaN marks a score that was not measured and is left out of every figure. Figures are
:class:`matplotlib.figure.Figure` objects, not pyplot, so drawing them neither needs nor changes the
caller's matplotlib backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medfm.evaluate.report import DPI, _distinct_colours, _save, _wrapped

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_MISSING_COLOUR = "lightgrey"
_MAX_COLUMNS = 4  # panels per row of the experience curves


def plot_result_matrix(R, names: Sequence[str], path: Path, *, title: str, metric: str = "AUROC") -> Path:
    """Heatmap of the result matrix, one annotated cell per score, unmeasured cells blank and grey."""
    return _save(_draw_result_matrix(R, names, title=title, metric=metric), Path(path))


def plot_experience_curves(
    results: Mapping[str, np.ndarray], names: Sequence[str], path: Path, *, metric: str = "AUROC"
) -> Path:
    """One panel per experience: its score after each training step, one line per strategy."""
    return _save(_draw_experience_curves(results, names, metric=metric), Path(path))


def plot_strategy_summary(
    summary: Mapping[str, Mapping[str, float]], path: Path, *, metric: str = "accuracy"
) -> Path:
    """ACC (the mean final score) and forgetting (max reference) per strategy, as two bar panels."""
    return _save(_draw_strategy_summary(summary, metric), Path(path))


# --- drawing -------------------------------------------------------------------------------------------


def _draw_result_matrix(R, names: Sequence[str], *, title: str, metric: str) -> Figure:
    matrix = _checked_matrix(R, names)
    size = len(names)
    figure = Figure(
        figsize=(max(4.5, 2.6 + 0.8 * size), max(3.4, 1.6 + 0.6 * size)), dpi=DPI, layout="constrained"
    )
    ax = figure.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad=_MISSING_COLOUR)
    image = ax.imshow(
        np.ma.masked_invalid(matrix), cmap=cmap, vmin=_lower_limit(matrix), vmax=1.0, aspect="auto"
    )
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color=_ink(cmap(image.norm(value))),
            )
    ax.set_xticks(range(size), names, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(size), [f"after training on {name}" for name in names], fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_title(_wrapped(title), fontsize=10)
    figure.colorbar(image, ax=ax, label=metric, shrink=0.8)
    return figure


def _draw_experience_curves(
    results: Mapping[str, np.ndarray], names: Sequence[str], *, metric: str
) -> Figure:
    if not results:
        raise ValueError("results holds no strategy")
    matrices = {strategy: _checked_matrix(R, names) for strategy, R in results.items()}
    size = len(names)
    columns = min(size, _MAX_COLUMNS)
    rows = math.ceil(size / columns)
    figure = Figure(figsize=(0.6 + 3.2 * columns, 0.4 + 2.8 * rows), dpi=DPI, layout="constrained")
    panels = figure.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    styles = _strategy_styles(list(matrices))
    steps = np.arange(size)
    for j, ax in enumerate(panels[:size]):
        for strategy, matrix in matrices.items():
            scores = matrix[:, j]
            measured = ~np.isnan(scores)  # unmeasured steps are skipped, the measured ones still joined
            colour, marker = styles[strategy]
            ax.plot(
                steps[measured], scores[measured], color=colour, marker=marker, markersize=5, linewidth=1.2
            )
        ax.axvline(j, color="grey", linestyle=":", linewidth=1)
        _label_steps(ax, names, metric if j % columns == 0 else None)
        ax.set_title(_wrapped(f"evaluated on {names[j]}", 40), fontsize=9)
    for ax in panels[size:]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=colour, marker=marker, label=strategy)
        for strategy, (colour, marker) in styles.items()
    ]
    handles.append(Line2D([], [], color="grey", linestyle=":", label="trained on this experience"))
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False, title="strategy")
    return figure


def _draw_strategy_summary(summary: Mapping[str, Mapping[str, float]], metric: str) -> Figure:
    if not summary:
        raise ValueError("summary holds no strategy")
    strategies = list(summary)
    colours = [colour for colour, _ in _strategy_styles(strategies).values()]
    figure = Figure(figsize=(8.0, 1.4 + 0.35 * len(strategies)), dpi=DPI, layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    for ax, key, label in zip(
        panels,
        ("acc", "forgetting"),
        (f"ACC (mean final {metric})", f"forgetting of {metric} (max reference; lower is better)"),
    ):
        values = np.array([summary[s].get(key, np.nan) for s in strategies], dtype=float)
        _draw_bars(ax, values, colours)
        ax.set_title(label, fontsize=10)
    panels[0].set_yticks(range(len(strategies)), [_wrapped(s, 30) for s in strategies], fontsize=8)
    panels[0].set_ylim(len(strategies) - 0.5, -0.5)  # first strategy on top
    return figure


def _draw_bars(ax: Axes, values: np.ndarray, colours: list[tuple]) -> None:
    """Horizontal bars labelled with their values; a NaN value gets no bar but an "n/a" label."""
    rows = np.arange(len(values))
    measured = ~np.isnan(values)
    bars = ax.barh(
        rows[measured], values[measured], height=0.7, color=[c for c, m in zip(colours, measured) if m]
    )
    ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    for row in rows[~measured]:
        ax.text(0, row, " n/a", va="center", ha="left", fontsize=8, color="grey")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.margins(x=0.15)  # room for the value labels beyond the longest bar
    ax.grid(axis="x", alpha=0.3)


# --- helpers -------------------------------------------------------------------------------------------


def _checked_matrix(R, names: Sequence[str]) -> np.ndarray:
    if not names:
        raise ValueError("no experience names: a result matrix needs at least one experience")
    matrix = np.asarray(R, dtype=float)
    if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
        raise ValueError(
            f"a result matrix must have shape ({len(names)}, {len(names)}), one row and column per "
            f"experience name, got shape {matrix.shape}"
        )
    return matrix


def _lower_limit(matrix: np.ndarray) -> float:
    """Bottom of the colour scale: 0.5 (chance AUROC) unless a score lies below it."""
    finite = matrix[np.isfinite(matrix)]
    lowest = finite.min() if finite.size else 0.5
    return float(max(0.0, min(0.5, math.floor(lowest * 10) / 10)))


def _ink(background: tuple) -> str:
    """Black or white text, whichever reads better on ``background``."""
    red, green, blue = background[:3]
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"


def _strategy_styles(strategies: list[str]) -> dict[str, tuple[tuple, str]]:
    """One (colour, marker) per strategy, in the given order, so that figures of one run agree."""
    colours = _distinct_colours(len(strategies))
    return {s: (colours[i], _MARKERS[i % len(_MARKERS)]) for i, s in enumerate(strategies)}


def _label_steps(ax: Axes, names: Sequence[str], ylabel: str | None) -> None:
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.4, len(names) - 0.6)
    ax.set_xlabel("after training on", fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
