"""Power laws recover known exponents; frontiers, scaling fits and slope tables follow the contract."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from medfm.scale.fit import (
    PowerLawFit,
    fit_power_law,
    loss_frontier,
    pareto_frontier,
    scaling_fits,
    slope_factor_table,
)

# Synthetic joint law: value = 0.6 * P**0.02 * D**0.015 * exp(noise), noise sd 0.002, on a 3 x 3 grid.
# The standard error of each exponent is about 0.0004, so 0.005 is more than ten of them.
TOLERANCE = 0.005
NOISE_SD = 0.002
TRUTH = {"parameters": 0.02, "pictures": 0.015}
SEEDS = 20
MIN_COVERED = 17  # of SEEDS 95 % intervals of one exponent: a correct interval does so 98 % of the time

FITS_COLUMNS = ["task", "method", "mix", "metric", "law", "variable", "exponent", "ci_low", "ci_high"]
FITS_COLUMNS += ["intercept", "r2", "n"]


def grid(
    slope_p: float = 0.02, slope_d: float = 0.015, noise: float = NOISE_SD, seed: int = 0
) -> pd.DataFrame:
    """A 3 x 3 grid of parameters x pictures with the joint law's value (and FLOPs growing with both)."""
    rng = np.random.default_rng(seed)
    p, d = np.meshgrid([1e5, 1e6, 1e7], [1e3, 1e4, 1e5])
    frame = pd.DataFrame({"parameters": p.ravel().astype(int), "pictures": d.ravel().astype(int)})
    frame["train_flops"] = 6.0 * frame["parameters"] * frame["pictures"] * 10
    law = 0.6 * frame["parameters"] ** slope_p * frame["pictures"] ** slope_d
    frame["value"] = law * np.exp(rng.normal(0, noise, len(frame)))
    return frame


def test_joint_law_recovers_known_exponents():
    covered = dict.fromkeys(TRUTH, 0)
    for seed in range(SEEDS):
        fit = fit_power_law(grid(seed=seed), "value", ["parameters", "pictures"])
        assert fit.variables == ("parameters", "pictures") and fit.n == 9
        for name, truth in TRUTH.items():
            assert fit.exponents[name] == pytest.approx(truth, abs=TOLERANCE)
            covered[name] += fit.ci_low[name] <= truth <= fit.ci_high[name]
    assert min(covered.values()) >= MIN_COVERED


def test_pure_power_law_is_recovered_exactly():
    x = np.logspace(0, 4, 12)
    fit = fit_power_law(pd.DataFrame({"x": x, "y": 3 * x**-0.3}), "y", ["x"])
    assert fit.exponents["x"] == pytest.approx(-0.3, abs=1e-9)
    assert fit.intercept == pytest.approx(np.log(3), abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(fit.predict(x=[1.0, 100.0]), [3.0, 3 * 100**-0.3], rtol=1e-9)


def test_fixed_effect_shares_the_slope_and_keeps_the_reference_intercept():
    rng = np.random.default_rng(1)
    x = np.tile(np.logspace(2, 6, 8), 2)
    method = np.repeat(["mae", "dino"], 8)  # "dino" sorts first: the reference level
    y = np.where(method == "dino", 0.5, 0.8) * x**0.1 * np.exp(rng.normal(0, 0.001, len(x)))
    frame = pd.DataFrame({"x": x, "method": method, "y": y})
    fit = fit_power_law(frame, "y", ["x"], fixed_effects=["method"])
    assert fit.exponents["x"] == pytest.approx(0.1, abs=0.002)
    assert fit.intercept == pytest.approx(np.log(0.5), abs=0.01)
    assert fit.predict(x=1e4) == pytest.approx(0.5 * 1e4**0.1, rel=0.01)
    # Without the fixed effect the two intercepts blur into one and the fit is poorer.
    assert fit_power_law(frame, "y", ["x"]).r2 < fit.r2


def test_no_residual_degrees_of_freedom_gives_nan_intervals():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_power_law(pd.DataFrame({"x": [1.0, 10.0], "y": [2.0, 4.0]}), "y", ["x"])
    assert fit.exponents["x"] == pytest.approx(np.log10(2))
    assert np.isnan(fit.ci_low["x"]) and np.isnan(fit.ci_high["x"]) and np.isnan(fit.r2)


@pytest.mark.parametrize(
    ("frame", "x", "message"),
    [
        (pd.DataFrame({"size": [1.0, 2.0, 3.0], "auc": [0.5, 0.0, 0.7]}), ["size"], "'auc'"),
        (pd.DataFrame({"size": [1.0, -2.0, 3.0], "auc": [0.5, 0.6, 0.7]}), ["size"], "'size'"),
        (pd.DataFrame({"size": [1.0, np.nan, 3.0], "auc": [0.5, 0.6, 0.7]}), ["size"], "'size'"),
        (pd.DataFrame({"size": [2.0, 2.0, 2.0], "auc": [0.5, 0.6, 0.7]}), ["size"], "single value"),
        (
            pd.DataFrame({"size": [1.0, 2.0], "data": [3.0, 4.0], "auc": [0.5, 0.6]}),
            ["size", "data"],
            "point",
        ),
    ],
)
def test_unusable_input_is_refused(frame, x, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(frame, "auc", x)


def test_predict_needs_every_variable():
    fit = PowerLawFit(("a",), {"a": 1.0}, {"a": 0.9}, {"a": 1.1}, intercept=0.0, r2=1.0, n=3)
    assert fit.predict(a=2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="variables"):
        fit.predict(b=2.0)


def test_pareto_frontier_by_hand():
    x = [1, 1, 2, 2, 3, 4, 0.5, np.nan]
    y = [5, 4, 4, 4, 1, 2, 9, 0]
    # (1, 5) loses to (1, 4); the second (2, 4) repeats the first; (4, 2) loses to (3, 1); NaN never counts.
    expected = [False, True, True, False, True, False, True, False]
    np.testing.assert_array_equal(pareto_frontier(x, y), expected)


def points_table() -> pd.DataFrame:
    """Two tasks with different parameter slopes on a full grid, one with a single model size."""
    tables = []
    for task, slope_p, seed in [("steep", 0.05, 0), ("flat", 0.01, 1)]:
        frame = grid(slope_p=slope_p, seed=seed).assign(task=task)
        tables.append(frame)
    single = grid(seed=2)
    tables.append(single[single["parameters"] == 1e6].assign(task="one_model"))
    points = pd.concat(tables, ignore_index=True).assign(method="mae", mix="all", metric="auroc")
    other_metric = points.assign(metric="accuracy", value=0.5)
    unusable = points.head(3).assign(value=[0.0, np.nan, -1.0])
    return pd.concat([points, other_metric, unusable], ignore_index=True)


def test_scaling_fits_recover_each_task_slope():
    fits = scaling_fits(points_table())
    assert list(fits.columns) == FITS_COLUMNS
    assert set(fits["metric"]) == {"auroc"}
    joint = fits[fits["law"] == "joint"].set_index(["task", "variable"])["exponent"]
    assert joint["steep", "parameters"] == pytest.approx(0.05, abs=TOLERANCE)
    assert joint["flat", "parameters"] == pytest.approx(0.01, abs=TOLERANCE)
    assert joint["steep", "pictures"] == pytest.approx(0.015, abs=TOLERANCE)
    assert set(joint.loc["one_model"].index) == {"pictures"}
    single = fits[fits["law"] == "single"]
    assert set(single["task"]) == {"steep", "flat", "one_model"} and set(single["variable"]) == {
        "train_flops"
    }
    assert fits.set_index(["task", "law", "variable"]).loc[("steep", "joint", "parameters"), "n"] == 9


def test_scaling_fits_skip_a_group_without_variation(caplog):
    points = grid().head(1).assign(task="t", method="mae", mix="all", metric="auroc")
    with caplog.at_level(logging.WARNING, logger="medfm.scale"):
        fits = scaling_fits(points)
    assert fits.empty and list(fits.columns) == FITS_COLUMNS
    assert "skipped" in caplog.text


def test_scaling_fits_skip_a_joint_law_whose_variables_move_together(caplog):
    diagonal = grid()
    diagonal = diagonal[np.log10(diagonal["parameters"]) - np.log10(diagonal["pictures"]) == 2]
    points = diagonal.assign(task="t", method="mae", mix="all", metric="auroc")
    with caplog.at_level(logging.WARNING, logger="medfm.scale"):
        fits = scaling_fits(points)
    assert fits["law"].tolist() == ["single"] and fits["n"].tolist() == [3]
    assert "joint law skipped" in caplog.text


def runs_table() -> pd.DataFrame:
    """Frontier runs on loss = 5 * flops**-0.1, dominated runs 20 % above the law, and a lone dino run."""
    flops = np.logspace(15, 19, 5)
    frontier = pd.DataFrame({"train_flops": flops, "heldout_loss": 5 * flops**-0.1})
    dominated = pd.DataFrame({"train_flops": flops * 1.5, "heldout_loss": 1.2 * 5 * (flops * 1.5) ** -0.1})
    mae = pd.concat([frontier, dominated], ignore_index=True).assign(method="mae", mix="all")
    dino = pd.DataFrame({"train_flops": [1e16], "heldout_loss": [3.0], "method": ["dino"], "mix": ["all"]})
    runs = pd.concat([mae, dino], ignore_index=True)
    return runs.assign(cell=[f"c{i:02d}" for i in range(len(runs))])


def test_loss_frontier_fits_the_frontier_only():
    frontier, fits = loss_frontier(runs_table())
    assert list(frontier.columns) == ["method", "mix", "cell", "train_flops", "heldout_loss", "on_frontier"]
    assert list(fits.columns) == ["method", "mix", "exponent", "ci_low", "ci_high", "intercept", "r2", "n"]
    assert frontier["on_frontier"].tolist() == [True] * 5 + [False] * 5 + [True]
    fits = fits.set_index("method")
    assert fits.loc["mae", "exponent"] == pytest.approx(-0.1, abs=1e-9)
    assert fits.loc["mae", "intercept"] == pytest.approx(np.log(5), abs=1e-9)
    assert fits.loc["mae", "n"] == 5
    assert np.isnan(fits.loc["dino", "exponent"]) and fits.loc["dino", "n"] == 1


def fits_table(slopes: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": [f"t{i}" for i in range(len(slopes))],
            "method": "mae",
            "mix": "all",
            "metric": "auroc",
            "law": "joint",
            "variable": "parameters",
            "exponent": slopes,
        }
    )


def factors_table(tasks: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": [f"t{i}" for i in range(tasks)],
            "n_classes": [2, 3, 5, 14][:tasks],
            "n_train": [100] * tasks,  # constant: no correlation is defined
            "gzip_ratio": [0.9, 0.5, 0.7, 0.6][:tasks],
        }
    )


def test_slope_factor_table_ranks_slopes_with_factors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = slope_factor_table(fits_table([0.01, 0.02, 0.04, 0.05]), factors_table(4))
    assert list(table.columns) == [
        "method",
        "mix",
        "variable",
        "factor",
        "tasks",
        "spearman_rho",
        "spearman_p",
        "pearson_r",
        "pearson_p",
        "spearman_p_holm",
        "pearson_p_holm",
    ]
    # Holm over the factors of one method and mix: the smallest p times the family's size, then monotone
    p = table["pearson_p"].to_numpy()
    defined = np.sort(p[~np.isnan(p)])
    expected = np.maximum.accumulate(np.minimum(1, defined * np.arange(len(defined), 0, -1)))
    assert np.allclose(np.sort(table["pearson_p_holm"].dropna()), expected)
    assert table["pearson_p_holm"].isna().equals(table["pearson_p"].isna())
    table = table.set_index("factor")
    assert table.loc["n_classes", "spearman_rho"] == pytest.approx(1.0)
    assert table.loc["n_classes", "pearson_r"] > 0.8
    assert table.loc["n_classes", "tasks"] == 4
    assert np.isnan(table.loc["n_train", "spearman_rho"]) and np.isnan(table.loc["n_train", "pearson_r"])


def test_slope_factor_table_needs_three_tasks():
    table = slope_factor_table(fits_table([0.01, 0.02]), factors_table(2))
    assert (table["tasks"] == 2).all()
    assert table[["spearman_rho", "spearman_p", "pearson_r", "pearson_p"]].isna().all().all()
