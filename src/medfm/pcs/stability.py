"""Stability of results across a perturbation grid.

A stage run under a grid of perturbations gives one tidy table: a row per (cell, unit), where a
cell is one combination of axis alternatives (seed, train subsample, resolution, ...) and a unit
(``UNIT``) names one reported number (task, model, protocol, ..., metric, split). The functions
here summarise how much each number moves across cells, which axis moves it most, whether the
ranking of models holds, and how much the models' predictions agree. Every cell with a finite
value is summarised, and each summary carries ``n_pass`` and ``pass_rate``: how many of those cells
passed the prediction check. Summarising only the passing cells trims the low tail and hides a model
that never passes, so that view is asked for separately (``passing_only=True``); its pass counts still
refer to every cell with a value.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations, permutations

import numpy as np
import pandas as pd
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from medfm.evaluate.metrics import LOWER_IS_BETTER

UNIT = ("task", "model", "protocol", "setting", "eval_set", "subgroup", "metric", "split")
NUMBERS = ("value", "ci_low", "ci_high", "n", "n_subjects")  # a unit's numeric columns
RANK_WITHIN = ("task", "eval_set", "subgroup", "metric", "split")
_COMPARED = ("model", "protocol", "setting")


def perturbation_stats(df: pd.DataFrame, *group_by: str, wrt: str = "value") -> pd.DataFrame:
    """Count, mean and standard deviation (ddof=1) of ``wrt`` per group of ``group_by`` columns.

    Reproduces ``vflow.utils.perturbation_stats`` (vflow 1.0.0) for scalar columns with the
    default statistics, so results read the same as in the veridical-flow papers: one key groups
    by the bare column, several by the list, none treats the table as one group (index column
    ``index`` holding True). Columns are ``count``, ``mean``, ``std``, rows sorted by the first key.
    """
    if len(group_by) == 1:
        grouped = df.groupby(group_by[0])[wrt]
    elif group_by:
        grouped = df.groupby(list(group_by))[wrt]
    else:
        grouped = df.groupby(lambda _: True)[wrt]
    out = grouped.agg(["count", "mean", "std"])
    out = out.reindex(sorted(out.columns), axis=1).reset_index()
    # vflow's exact call (default, unstable sort kind), so tied rows come out in the same order.
    return out.sort_values(group_by[0]) if group_by else out


def stability_table(df: pd.DataFrame, axes: list[str], passing_only: bool = False) -> pd.DataFrame:
    """Spread of every unit's value across cells, and the axis that moves it most.

    One row per ``UNIT`` group: ``cells`` summarised, ``n_pass`` / ``pass_rate`` (see
    ``pass_counts``), ``mean``, ``sd`` (ddof=1, NaN for one cell), ``q025`` / ``q975`` (linear
    percentiles), ``min``, ``max``, and ``top_axis`` / ``top_axis_share``: the axis with the largest
    main-effect share (see ``axis_effects``; the first of ``axes`` on a tie), or "" and NaN when no
    axis varies within the unit. ``passing_only`` summarises only the cells that passed the check.
    """
    scored = _scored(df, axes)
    summarised = scored[scored["passed"]] if passing_only else scored
    stats = (
        summarised.groupby(list(UNIT), dropna=False)["value"]
        .agg(
            cells="count",
            mean="mean",
            sd="std",
            q025=lambda v: np.percentile(v, 2.5),
            q975=lambda v: np.percentile(v, 97.5),
            min="min",
            max="max",
        )
        .reset_index()
    )
    stats = _with_pass_counts(stats, scored, "cells")
    effects = axis_effects(df, axes, passing_only)
    top = (
        effects.sort_values("share", ascending=False, kind="stable")
        .drop_duplicates(list(UNIT))
        .loc[:, [*UNIT, "axis", "share"]]
        .rename(columns={"axis": "top_axis", "share": "top_axis_share"})
    )
    out = stats.merge(top, on=list(UNIT), how="left")
    out["top_axis"] = out["top_axis"].fillna("").astype(str)
    out["top_axis_share"] = out["top_axis_share"].astype(float)
    return out


def axis_effects(df: pd.DataFrame, axes: list[str], passing_only: bool = False) -> pd.DataFrame:
    """Main effect of each axis on each unit's value.

    One row per (``UNIT``..., ``axis``) for every axis with at least two alternatives present in
    the unit: ``alternatives``, ``effect_sd`` (ddof=0) and ``effect_range`` of the per-alternative
    means, ``share``, the eta squared: between-alternative sum of squares over the total sum of
    squares around the unit mean (0 when the values do not vary), and the unit's ``n_pass`` /
    ``pass_rate``. ``passing_only`` uses only the cells that passed the check.
    """
    scored = _scored(df, axes)
    summarised = scored[scored["passed"]] if passing_only else scored
    rows = []
    for unit, group in summarised.groupby(list(UNIT), dropna=False):
        values = group["value"]
        deviations = values - values.mean()
        total_ss = float((deviations**2).sum())
        for axis in axes:
            by_alternative = values.groupby(group[axis])
            means, sizes = by_alternative.mean(), by_alternative.size()
            if len(means) < 2:
                continue
            between_ss = float((sizes * (means - values.mean()) ** 2).sum())
            constant = values.max() == values.min()  # rounding must not turn 0/0 into a share
            rows.append(
                (
                    *unit,
                    axis,
                    len(means),
                    float(means.std(ddof=0)),
                    float(means.max() - means.min()),
                    0.0 if constant or total_ss == 0 else between_ss / total_ss,
                )
            )
    columns = [*UNIT, "axis", "alternatives", "effect_sd", "effect_range", "share"]
    return _with_pass_counts(pd.DataFrame(rows, columns=columns), scored, "share")


def rank_stability(
    df: pd.DataFrame, axes: list[str], within: tuple[str, ...] = RANK_WITHIN, passing_only: bool = False
) -> pd.DataFrame:
    """How steady the ranking of models is across cells.

    Models are the distinct (model, protocol, setting) triples, named "model / protocol" (plus
    " / setting" when set). Within each ``within`` group, every cell (combination of the axis
    columns) holding at least two models ranks them: 1 is best, higher values are better except
    for metrics in ``LOWER_IS_BETTER``, ties go to the alphabetically first name. One row per
    (``within``..., ``model``) of groups with at least two models: ``cells`` ranked, ``n_pass`` /
    ``pass_rate`` (of the cells holding its value and another model's, those where it passed the check),
    ``mean_rank``, ``top_rate`` (share of those cells ranking the model first), ``modal_rank`` (the
    model's place in the most common full ranking; the earliest cell's ranking wins a tie) and
    ``ranking_holds`` (share of cells whose full ranking is that one). Only cells holding every
    model of the group count towards the modal ranking and ``ranking_holds``; both are NaN when
    no cell does. ``passing_only`` ranks only the models that passed in each cell.
    """
    rows = []
    for key, table, passed in _model_tables(df, axes, within, passing_only):
        rankable = passed[passed.notna().sum(axis=1) >= 2]  # cells holding two models: the pass-rate base
        rankings = [_ranking(row, key[within.index("metric")]) for _, row in table.iterrows()]
        rankings = [ranking for ranking in rankings if len(ranking) >= 2]
        full = [ranking for ranking in rankings if len(ranking) == table.shape[1]]
        modal = Counter(full).most_common(1)[0][0] if full else None
        holds = sum(ranking == modal for ranking in full) / len(full) if full else np.nan
        for model in table.columns:
            places = [ranking.index(model) + 1 for ranking in rankings if model in ranking]
            rows.append(
                (
                    *key,
                    model,
                    len(places),
                    *_pass_share(rankable[[model]]),
                    float(np.mean(places)) if places else np.nan,
                    float(np.mean([p == 1 for p in places])) if places else np.nan,
                    modal.index(model) + 1 if modal else np.nan,
                    holds,
                )
            )
    columns = [*within, "model", "cells", "n_pass", "pass_rate", "mean_rank", "top_rate", "modal_rank"]
    return pd.DataFrame(rows, columns=[*columns, "ranking_holds"])


def pairwise_wins(
    df: pd.DataFrame, axes: list[str], within: tuple[str, ...] = RANK_WITHIN, passing_only: bool = False
) -> pd.DataFrame:
    """Share of cells in which one model beats another.

    Models and cells as in ``rank_stability``. One row per (``within``..., ``model``,
    ``versus``) ordered pair sharing at least one cell: ``wins``, the share of the ``cells``
    holding both where ``model`` is strictly better than ``versus`` (lower is better for metrics
    in ``LOWER_IS_BETTER``; a tie is no win), and ``n_pass`` / ``pass_rate``: of the cells holding
    both values, those where both models passed the check. ``passing_only`` counts only those.
    """
    rows = []
    for key, table, passed in _model_tables(df, axes, within, passing_only):
        lower = key[within.index("metric")] in LOWER_IS_BETTER
        for model, versus in permutations(table.columns, 2):
            both = table[[model, versus]].dropna()
            if both.empty:
                continue
            better = both[model] < both[versus] if lower else both[model] > both[versus]
            shares = _pass_share(passed[[model, versus]])
            rows.append((*key, model, versus, float(better.mean()), len(both), *shares))
    return pd.DataFrame(rows, columns=[*within, "model", "versus", "wins", "cells", "n_pass", "pass_rate"])


def pass_counts(scored: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of ``keys`` of scored rows: ``n_pass``, the rows whose check passed, and ``pass_rate``,
    their share of the group."""
    grouped = scored.groupby(keys, dropna=False)["passed"]
    return grouped.agg(n_pass="sum", pass_rate="mean").reset_index()


def prediction_agreement(labels: np.ndarray) -> dict:
    """Agreement of predicted classes across raters (one rater per cell's model, one item per example).

    ``labels`` is a [raters, items] array. Returns ``raters``, ``items``, ``disagreement`` (share
    of items on which not all raters agree), ``pairwise_disagreement`` (mean over rater pairs of
    the share of items labelled differently; NaN for one rater) and ``fleiss_kappa`` (Fleiss
    1971). Kappa is NaN when undefined: a single rater, or a single category used by everyone.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"prediction labels must be a [raters, items] array; got {labels.ndim} dimension(s)")
    raters, items = labels.shape
    if raters < 1 or items < 1:
        raise ValueError(f"prediction labels need at least one rater and one item; got shape {labels.shape}")
    pairs = [np.mean(labels[i] != labels[j]) for i, j in combinations(range(raters), 2)]
    table, categories = aggregate_raters(labels.T)
    # Both cases are 0/0 in the formula (no rater pairs; expected agreement of 1).
    undefined = raters < 2 or len(categories) < 2
    return {
        "raters": raters,
        "items": items,
        "disagreement": float(np.mean((labels != labels[0]).any(axis=0))),
        "pairwise_disagreement": float(np.mean(pairs)) if pairs else np.nan,
        "fleiss_kappa": np.nan if undefined else float(fleiss_kappa(table, method="fleiss")),
    }


def _scored(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Rows whose value is finite, with ``passed`` as booleans; raises on missing columns."""
    missing = [c for c in (*UNIT, *axes, "value", "passed") if c not in df.columns]
    if missing:
        raise ValueError(f"stability table is missing columns: {', '.join(missing)}")
    values = pd.to_numeric(df["value"], errors="coerce")
    return df[np.isfinite(values)].assign(value=values.astype(float), passed=df["passed"].eq(True))


def _with_pass_counts(table: pd.DataFrame, scored: pd.DataFrame, after: str) -> pd.DataFrame:
    """``table`` (one row per unit, or per unit and axis) with its units' pass counts after ``after``."""
    out = table.merge(pass_counts(scored, list(UNIT)), on=list(UNIT), how="left")
    columns = list(table.columns)
    place = columns.index(after) + 1
    return out[[*columns[:place], "n_pass", "pass_rate", *columns[place:]]]


def _pass_share(passed: pd.DataFrame) -> tuple[int, float]:
    """Of the cells holding a verdict for every model (column) of ``passed``, how many passed for all of
    them, and their share."""
    every = passed.dropna().astype(bool).all(axis=1)
    return int(every.sum()), float(every.mean()) if len(every) else np.nan


def _model_tables(df: pd.DataFrame, axes: list[str], within: tuple[str, ...], passing_only: bool):
    """Yield (within key, cells x models table of values, the same table of check verdicts) for groups
    with at least two models; ``passing_only`` blanks the values that failed their check."""
    if "metric" not in within:
        raise ValueError(f"models can only be ranked within one metric; 'metric' is not in {within}")
    scored = _scored(df, [*axes, *within])
    setting = scored["setting"].fillna("").astype(str)
    named = scored.assign(
        _model=scored["model"].astype(str)
        + " / "
        + scored["protocol"].astype(str)
        + setting.map(lambda s: f" / {s}" if s else ""),
        _cell=scored.groupby(list(axes), dropna=False).ngroup() if axes else 0,
    )
    for key, group in named.groupby(list(within), dropna=False):
        repeated = group.duplicated(["_cell", "_model"])
        if repeated.any():
            raise ValueError(
                f"model {group.loc[repeated, '_model'].iloc[0]!r} has several values in one cell of {key}; "
                "the axes and the within columns must identify each number"
            )
        table = group.pivot(index="_cell", columns="_model", values="value")
        passed = group.pivot(index="_cell", columns="_model", values="passed")
        if passing_only:
            table = table.where(passed.eq(True)).dropna(axis=1, how="all")
        if table.shape[1] >= 2:
            yield key, table, passed


def _ranking(row: pd.Series, metric: str) -> tuple[str, ...]:
    """Models present in one cell, best first; ties go to the alphabetically first name."""
    present = row.dropna()
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return tuple(sorted(present.index, key=lambda model: (sign * present[model], model)))
