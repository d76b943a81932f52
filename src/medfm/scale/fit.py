"""Power laws of a scaling study, fitted in log space.

BioVFM fits, per task, ``log(metric) = a + b log(model size)`` and asks which properties of a task go
with a steep slope ``b``. Here the same ordinary least squares (statsmodels) gives the joint law in
parameters and pretraining pictures, the single law in training FLOPs, the compute frontier of the
held-out pretraining loss, and the rank and linear correlations of the slopes with dataset factors
(:mod:`medfm.scale.factors`). The tables read and written are described with each function.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from medfm.evaluate.bootstrap import holm_adjusted
from medfm.log import get_logger

log = get_logger("scale")

JOINT = ("parameters", "pictures")  # variables of the joint law
SINGLE = "train_flops"  # variable of the single law
FIT_COLUMNS = ["exponent", "ci_low", "ci_high", "intercept", "r2", "n"]
FACTOR_COLUMNS = ["tasks", "spearman_rho", "spearman_p", "pearson_r", "pearson_p"]
# Holm-adjusted over the factors of one method and mix (each correlation's family)
HOLM_COLUMNS = ["spearman_p_holm", "pearson_p_holm"]


@dataclass(frozen=True)
class PowerLawFit:
    """``y = exp(intercept) * prod_i x_i ** exponents[i]``, with t-intervals of the exponents (NaN when the
    fit has no residual degrees of freedom)."""

    variables: tuple[str, ...]
    exponents: dict[str, float]
    ci_low: dict[str, float]
    ci_high: dict[str, float]
    intercept: float  # natural log
    r2: float  # of the log-space fit; NaN without residual degrees of freedom or variation in y
    n: int

    def predict(self, **values) -> np.ndarray:
        """The law at the given values of every variable (fixed effects at their reference level)."""
        if set(values) != set(self.variables):
            raise ValueError(
                f"predict needs exactly the variables {list(self.variables)}, got {sorted(values)}"
            )
        log_y = self.intercept + sum(
            self.exponents[name] * np.log(np.asarray(values[name], dtype=float)) for name in self.variables
        )
        return np.exp(log_y)


def fit_power_law(
    frame: pd.DataFrame,
    y: str,
    x: Sequence[str],
    *,
    fixed_effects: Sequence[str] = (),
    level: float = 0.95,
) -> PowerLawFit:
    """OLS of ``log(y)`` on ``log(x_i)`` and one dummy per non-reference level of each fixed-effect column
    (the reference is the first sorted level), so groups may differ in intercept but share the exponents.
    """
    x = [x] if isinstance(x, str) else list(x)
    fixed_effects = list(fixed_effects)
    for column in [y, *x]:
        values = frame[column].to_numpy(dtype=float)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"power-law fit: column {column!r} must hold finite positive values only")
    for column in x:
        if frame[column].nunique() < 2:
            raise ValueError(
                f"power-law fit: column {column!r} takes a single value; its exponent is undefined"
            )
    for column in fixed_effects:
        if frame[column].isna().any():
            raise ValueError(f"power-law fit: fixed-effect column {column!r} has missing values")

    logs = pd.DataFrame({name: np.log(frame[name].to_numpy(dtype=float)) for name in x}, index=frame.index)
    dummies = [pd.get_dummies(frame[c], prefix=c, drop_first=True, dtype=float) for c in fixed_effects]
    design = sm.add_constant(pd.concat([logs, *dummies], axis=1), has_constant="add")
    n, k = design.shape
    if n < k:
        raise ValueError(f"power-law fit of {y!r}: {n} point(s) for {k} coefficients")
    if np.linalg.matrix_rank(design.to_numpy()) < k:
        raise ValueError(
            f"power-law fit of {y!r}: columns {x + fixed_effects} do not vary independently of each other"
        )

    result = sm.OLS(np.log(frame[y].to_numpy(dtype=float)), design).fit()
    if result.df_resid > 0:
        interval = result.conf_int(alpha=1 - level)
        low, high = interval[0], interval[1]
        r2 = float(result.rsquared) if result.centered_tss > 0 else float("nan")
    else:
        low = high = pd.Series(np.nan, index=design.columns)
        r2 = float("nan")
    return PowerLawFit(
        variables=tuple(x),
        exponents={name: float(result.params[name]) for name in x},
        ci_low={name: float(low[name]) for name in x},
        ci_high={name: float(high[name]) for name in x},
        intercept=float(result.params["const"]),
        r2=r2,
        n=int(n),
    )


def pareto_frontier(x, y) -> np.ndarray:
    """True where no other point has ``x <= this x`` and a lower ``y`` (the cheapest way to each loss).

    Of exact duplicates only the first is on the frontier; points with a NaN are never on it.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    dominated = ((x[None, :] <= x[:, None]) & (y[None, :] < y[:, None])).any(axis=1)
    same = (x[None, :] == x[:, None]) & (y[None, :] == y[:, None])
    repeated = np.tril(same, k=-1).any(axis=1)
    return np.isfinite(x) & np.isfinite(y) & ~dominated & ~repeated


def _fit_values(fit: PowerLawFit, name: str) -> dict:
    """The ``fits`` columns of one variable of a fit."""
    return {
        "exponent": fit.exponents[name],
        "ci_low": fit.ci_low[name],
        "ci_high": fit.ci_high[name],
        "intercept": fit.intercept,
        "r2": fit.r2,
        "n": fit.n,
    }


def _group_keys(by: Sequence[str], keys) -> dict:
    return dict(zip(by, keys if isinstance(keys, tuple) else (keys,)))


def law_variables(group: pd.DataFrame) -> dict[str, list[str]]:
    """The variables of each law that vary within ``group`` (a law with none is left out)."""
    laws = {
        "joint": [name for name in JOINT if group[name].nunique() > 1],
        "single": [SINGLE] if group[SINGLE].nunique() > 1 else [],
    }
    return {law: variables for law, variables in laws.items() if variables}


def scaling_fits(
    points: pd.DataFrame, metric: str = "auroc", by: Sequence[str] = ("task", "method", "mix")
) -> pd.DataFrame:
    """Per group of ``by``, the joint law of ``metric`` in parameters and pictures and the single law in
    training FLOPs (the ``fits`` table: one row per group, law and variable).

    Only rows of ``metric`` with a finite positive value are used. A variable that takes a single value in
    a group leaves that group's law; a law that cannot be fitted (no variable left, variables that move
    together) is skipped with a warning.
    """
    by = list(by)
    values = points["value"].to_numpy(dtype=float)
    usable = points[(points["metric"] == metric).to_numpy() & np.isfinite(values) & (values > 0)]
    rows = []
    for keys, group in usable.groupby(by):
        base = {**_group_keys(by, keys), "metric": metric}
        laws = law_variables(group)
        if not laws:
            log.warning("scaling fit of %s: %s take a single value; group skipped", base, [*JOINT, SINGLE])
            continue
        for law, variables in laws.items():
            try:
                fit = fit_power_law(group, "value", variables)
            except ValueError as error:
                log.warning("scaling fit of %s: %s law skipped: %s", base, law, error)
                continue
            rows += [{**base, "law": law, "variable": name, **_fit_values(fit, name)} for name in variables]
    return pd.DataFrame(rows, columns=[*by, "metric", "law", "variable", *FIT_COLUMNS])


def loss_frontier(
    runs: pd.DataFrame, by: Sequence[str] = ("method", "mix")
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The compute frontier of the held-out pretraining loss per group of ``by``, and the power law
    ``heldout_loss = exp(a) * train_flops ** b`` fitted to the frontier points only (``frontier`` and
    ``frontier_fits``; the fit is NaN with fewer than 2 frontier points)."""
    by = list(by)
    frontier = runs[[*by, "cell", "train_flops", "heldout_loss"]].reset_index(drop=True)
    frontier["on_frontier"] = False
    fits = []
    for keys, group in frontier.groupby(by):
        on = pareto_frontier(group["train_flops"], group["heldout_loss"])
        frontier.loc[group.index, "on_frontier"] = on
        row = {**_group_keys(by, keys), **dict.fromkeys(FIT_COLUMNS, np.nan), "n": int(on.sum())}
        if on.sum() >= 2:
            fit = fit_power_law(group[on], "heldout_loss", [SINGLE])
            row.update(_fit_values(fit, SINGLE))
        fits.append(row)
    return frontier, pd.DataFrame(fits, columns=[*by, *FIT_COLUMNS])


def _correlations(slopes: np.ndarray, factor: np.ndarray) -> dict:
    """Spearman and Pearson correlations across tasks; NaN with fewer than 3 tasks or a constant input."""
    keep = np.isfinite(slopes) & np.isfinite(factor)
    slopes, factor = slopes[keep], factor[keep]
    row = {"tasks": int(keep.sum()), **dict.fromkeys(FACTOR_COLUMNS[1:], np.nan)}
    if row["tasks"] >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rho, rho_p = stats.spearmanr(slopes, factor)
            r, r_p = stats.pearsonr(slopes, factor)
        row.update(spearman_rho=float(rho), spearman_p=float(rho_p), pearson_r=float(r), pearson_p=float(r_p))
    return row


def slope_factor_table(
    fits: pd.DataFrame, factors: pd.DataFrame, variable: str = "parameters"
) -> pd.DataFrame:
    """How the exponent of ``variable`` correlates, across tasks, with each numeric dataset factor (the
    ``slope_factors`` table: one row per method, mix and factor).

    ``fits`` is a table from :func:`scaling_fits` for one metric; ``factors`` holds one row per task (the
    dicts of :func:`medfm.scale.factors.dataset_factors`).
    """
    fits = fits[fits["variable"] == variable]
    if fits["metric"].nunique() > 1:
        raise ValueError(f"slope_factor_table: fits hold several metrics {sorted(fits['metric'].unique())}")
    factors = pd.DataFrame(factors)
    names = [c for c in factors.columns if c != "task" and pd.api.types.is_numeric_dtype(factors[c])]
    merged = fits.merge(factors, on="task", how="inner")
    rows = []
    for (method, mix), group in merged.groupby(["method", "mix"]):
        slopes = group["exponent"].to_numpy(dtype=float)
        family = []
        for name in names:
            base = {"method": method, "mix": mix, "variable": variable, "factor": name}
            family.append({**base, **_correlations(slopes, group[name].to_numpy(dtype=float))})
        for test in ("spearman", "pearson"):
            adjusted = holm_adjusted([row[f"{test}_p"] for row in family])
            for row, p in zip(family, adjusted):
                row[f"{test}_p_holm"] = float(p)
        rows += family
    return pd.DataFrame(rows, columns=["method", "mix", "variable", "factor", *FACTOR_COLUMNS, *HOLM_COLUMNS])
