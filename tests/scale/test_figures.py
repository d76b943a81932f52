"""Scaling-study figures on small hand-made tables that follow the study's table contract."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from medfm.scale.figures import (
    count_label,
    draw_compute_curves,
    draw_exponents,
    draw_loss_frontier,
    draw_scaling_curves,
    draw_slope_factors,
    estimate_text,
    exponent_text,
    log_axis,
    power_law,
)

TASKS = ("chest-xray", "skin lesion")
METHODS = ("mae", "dino")
MODELS = {"vit_nano_patch4": 480_000, "vit_micro_patch4": 1_900_000, "vit_tiny_patch4": 5_500_000}
FRACTIONS = (0.1, 0.3, 1.0)
CORPUS = 20_000
B_PARAMS, B_PICTURES, B_FLOPS = 0.02, 0.03, 0.015
SCALE = 0.45  # value = SCALE * P^B_PARAMS * D^B_PICTURES (about 0.73 to 0.83 on this grid)
FIT_COLUMNS = ["exponent", "ci_low", "ci_high", "intercept", "r2", "n"]


def make_runs(mixes=("all",)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method, mix, (model, parameters), fraction in itertools.product(
        METHODS, mixes, MODELS.items(), FRACTIONS
    ):
        pictures = int(fraction * CORPUS)
        steps = 5 * pictures // 64
        flops = 6.0 * parameters * 64 * steps * 65  # 65 tokens per picture
        base = 3.0 if method == "dino" else 0.6  # the methods' losses differ in kind, not only in level
        rows.append(
            {
                "cell": f"c{len(rows):02d}",
                "method": method,
                "model": model,
                "mix": mix,
                "fraction": fraction,
                "parameters": parameters,
                "pictures": pictures,
                "images_seen": 64 * steps,
                "steps": steps,
                "train_flops": flops,
                "heldout_loss": base * (flops / 1e12) ** -0.08 * np.exp(rng.normal(0, 0.05)),
                "seconds": flops / 1e12,
            }
        )
    return pd.DataFrame(rows)


def make_points(runs: pd.DataFrame, metrics=("auroc",)) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for run, task, metric in itertools.product(runs.to_dict("records"), TASKS, metrics):
        value = SCALE * run["parameters"] ** B_PARAMS * run["pictures"] ** B_PICTURES
        value = float(np.clip(value * np.exp(rng.normal(0, 0.01)), 0.01, 1.0))
        low, high = value - 0.03, min(1.0, value + 0.03)
        rows.append({**run, "task": task, "metric": metric, "value": value, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def fit_row(keys: dict, law: str, variable: str, exponent: float, intercept: float) -> dict:
    values = [exponent, exponent - 0.01, exponent + 0.01, intercept, 0.9, 9]
    return {**keys, "law": law, "variable": variable, **dict(zip(FIT_COLUMNS, values))}


def make_fits(points: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (task, method, mix, metric), group in points.groupby(["task", "method", "mix", "metric"]):
        keys = {"task": task, "method": method, "mix": mix, "metric": metric}
        rows.append(fit_row(keys, "joint", "parameters", B_PARAMS, np.log(SCALE)))
        rows.append(fit_row(keys, "joint", "pictures", B_PICTURES, np.log(SCALE)))
        intercept = np.mean(np.log(group["value"]) - B_FLOPS * np.log(group["train_flops"]))
        rows.append(fit_row(keys, "single", "train_flops", B_FLOPS, intercept))
    return pd.DataFrame(rows)


def make_frontier(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    frontier, fits = [], []
    for (method, mix), group in runs.groupby(["method", "mix"]):
        group = group.sort_values("train_flops")
        best = np.minimum.accumulate(group["heldout_loss"].to_numpy())
        on = np.r_[True, group["heldout_loss"].to_numpy()[1:] < best[:-1]]
        frontier.append(
            group[["method", "mix", "cell", "train_flops", "heldout_loss"]].assign(on_frontier=on)
        )
        slope, intercept = np.polyfit(np.log(group["train_flops"][on]), np.log(group["heldout_loss"][on]), 1)
        values = [slope, slope - 0.02, slope + 0.02, intercept, 0.95, int(on.sum())]
        fits.append({"method": method, "mix": mix, **dict(zip(FIT_COLUMNS, values))})
    return pd.concat(frontier, ignore_index=True), pd.DataFrame(fits)


def make_factors() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": list(TASKS),
            "n_classes": [2, 7],
            "n_train": [5000, 800],
            "gzip_ratio": [0.41, 0.63],
            "davies_bouldin": [2.1, 3.4],
        }
    )


def make_slope_factors(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, mix), variable, factor in itertools.product(
        runs.groupby(["method", "mix"]).groups,
        ("parameters", "pictures", "train_flops"),
        ("n_classes", "n_train", "gzip_ratio", "davies_bouldin"),
    ):
        rows.append(
            {
                "method": method,
                "mix": mix,
                "variable": variable,
                "factor": factor,
                "tasks": 2,
                "spearman_rho": 1.0 if factor != "n_train" else -1.0,
                "spearman_p": np.nan,
                "pearson_r": 0.8,
                "pearson_p": 0.4,
                "spearman_p_holm": np.nan,
                "pearson_p_holm": 1.0,
            }
        )
    return pd.DataFrame(rows)


def tables(mixes=("all",)) -> dict[str, pd.DataFrame]:
    runs = make_runs(mixes)
    points = make_points(runs)
    frontier, frontier_fits = make_frontier(runs)
    return {
        "runs": runs,
        "points": points,
        "fits": make_fits(points),
        "frontier": frontier,
        "frontier_fits": frontier_fits,
        "factors": make_factors(),
        "slope_factors": make_slope_factors(runs),
    }


FIGURES = {
    "curves": lambda t, path: draw_scaling_curves(t["points"], t["fits"], TASKS[1], "auroc", path),
    "compute": lambda t, path: draw_compute_curves(t["points"], t["fits"], "auroc", path),
    "frontier": lambda t, path: draw_loss_frontier(t["frontier"], t["frontier_fits"], t["runs"], path),
    "slopes": lambda t, path: draw_slope_factors(t["fits"], t["factors"], t["slope_factors"], path),
    "slopes-flops": lambda t, path: draw_slope_factors(
        t["fits"], t["factors"], t["slope_factors"], path, variable="train_flops"
    ),
    "exponents": lambda t, path: draw_exponents(t["fits"], path),
    "exponents-boot": lambda t, path: draw_exponents(
        t["fits"].assign(boot_low=t["fits"]["exponent"] - 0.01, boot_high=t["fits"]["exponent"] + 0.01), path
    ),
}


def drawn(name: str, t: dict[str, pd.DataFrame], folder) -> tuple[int, int]:
    """Draw one figure, check that it is a PNG of a sensible size and return its size in pixels."""
    path = FIGURES[name](t, folder / f"{name}.png")
    assert path == folder / f"{name}.png" and path.is_file()
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 400 <= width <= 3000 and 300 <= height <= 2500, image.size
    return width, height


def without_intervals_or_fits(t: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables with NaN intervals, a task without fits, a dropped variable and NaN correlations."""
    points, fits = t["points"], t["fits"]
    points.loc[points.index % 2 == 0, ["ci_low", "ci_high"]] = np.nan
    fits = fits[fits["task"] != TASKS[1]].copy()  # the second task has no fit at all
    fits.loc[fits["method"] == "dino", ["ci_low", "ci_high"]] = np.nan  # no residual degrees of freedom
    t["fits"] = fits[~((fits["method"] == "mae") & (fits["variable"] == "pictures"))]  # a dropped variable
    t["frontier_fits"].loc[0, ["exponent", "ci_low", "ci_high", "intercept", "r2"]] = np.nan
    t["slope_factors"]["spearman_rho"] = np.nan
    return t


@pytest.mark.parametrize("name", FIGURES)
def test_figure_is_a_sensible_png(name, tmp_path):
    drawn(name, tables(), tmp_path)


@pytest.mark.parametrize("name", FIGURES)
def test_figure_draws_without_intervals_or_fits(name, tmp_path):
    drawn(name, without_intervals_or_fits(tables()), tmp_path)


@pytest.mark.parametrize("name", ["compute", "frontier"])
def test_two_mixes(name, tmp_path):
    drawn(name, tables(mixes=("all", "xray")), tmp_path)


def test_scaling_curves_get_a_column_per_method_and_mix(tmp_path):
    (tmp_path / "two").mkdir()
    one = drawn("curves", tables(), tmp_path)
    two = drawn("curves", tables(mixes=("all", "xray")), tmp_path / "two")
    assert two[0] > 1.5 * one[0]  # four (method, mix) columns instead of two


def test_power_law_counts_a_dropped_variable_with_exponent_zero():
    fits = make_fits(make_points(make_runs()))
    keys = {"task": TASKS[0], "method": "mae", "mix": "all", "metric": "auroc"}
    joint = {
        r["variable"]: r
        for _, r in fits.iterrows()
        if r["law"] == "joint" and all(r[k] == v for k, v in keys.items())
    }
    p, d = np.array([1e6, 4e6]), 5000
    expected = SCALE * p**B_PARAMS * d**B_PICTURES
    np.testing.assert_allclose(power_law(joint, parameters=p, pictures=d), expected)
    np.testing.assert_allclose(
        power_law({"parameters": joint["parameters"]}, parameters=p, pictures=d), SCALE * p**B_PARAMS
    )
    assert power_law({}, parameters=p) is None


def test_texts():
    row = pd.Series({"exponent": 0.0214, "ci_low": 0.0101, "ci_high": 0.0323})
    assert exponent_text({"parameters": row}, "parameters") == "b_params = 0.021 [0.010, 0.032]"
    assert exponent_text({"parameters": row}, "pictures") == "b_pictures = –"
    assert estimate_text(0.0214, np.nan, np.nan) == "0.021 [–, –]"
    assert estimate_text(np.nan, np.nan, np.nan) == "–"
    assert [count_label(v) for v in (512, 20_000, 1_500_000, 999_999, 3e9)] == [
        "512",
        "20k",
        "1.5M",
        "1M",
        "3G",
    ]


def test_log_axes_label_plain_numbers():
    figure = Figure()
    ax = figure.add_subplot()
    ax.plot([4e5, 6e6], [0.72, 0.93])
    log_axis(ax, "x", counts=True)
    log_axis(ax, "y")
    figure.draw_without_rendering()
    y_labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    x_labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(y_labels) >= 3 and all(re.fullmatch(r"0\.\d\d", label) for label in y_labels), y_labels
    assert len(x_labels) >= 2 and all(re.fullmatch(r"\d+(\.\d+)?[kM]", label) for label in x_labels), x_labels


def test_slope_factors_ask_which_metric_when_fits_hold_several(tmp_path):
    t = tables()
    fits = make_fits(make_points(t["runs"], metrics=("auroc", "accuracy")))
    with pytest.raises(ValueError, match="several metrics"):
        draw_slope_factors(fits, t["factors"], t["slope_factors"], tmp_path / "slopes.png")
    path = draw_slope_factors(
        fits, t["factors"], t["slope_factors"], tmp_path / "slopes.png", metric="accuracy"
    )
    assert path.stat().st_size > 10_000
