"""Stability summaries over a perturbation grid, checked against hand-computed numbers."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfm.pcs.stability import (
    UNIT,
    axis_effects,
    pairwise_wins,
    perturbation_stats,
    prediction_agreement,
    rank_stability,
    stability_table,
)

AXES = ["seed", "size"]
# size 64 -> 0.80, 0.82, 0.84 and size 128 -> 0.90, 0.91, 0.92 for seeds 0, 1, 2.
GRID_VALUES = {("0", "64"): 0.80, ("1", "64"): 0.82, ("2", "64"): 0.84}
GRID_VALUES |= {("0", "128"): 0.90, ("1", "128"): 0.91, ("2", "128"): 0.92}
# All six values: mean 5.19 / 6 = 0.865; deviations -0.065, -0.045, -0.025, 0.035, 0.045, 0.055;
# squares 0.004225 + 0.002025 + 0.000625 + 0.001225 + 0.002025 + 0.003025 = 0.01315 (total SS);
# sd = sqrt(0.01315 / 5) = sqrt(0.00263).
TOTAL_SS = 0.01315


def unit_row(**fields) -> dict:
    base = {
        "task": "effusion",
        "modality": "xray",
        "model": "vit",
        "protocol": "linear",
        "setting": "",
        "eval_set": "internal",
        "subgroup": "all",
        "metric": "auroc",
        "split": "test",
        "passed": True,
    }
    return base | fields


@pytest.fixture
def grid() -> pd.DataFrame:
    rows = [
        unit_row(cell=f"seed={seed},size={size}", seed=seed, size=size, value=value)
        for (seed, size), value in GRID_VALUES.items()
    ]
    return pd.DataFrame(rows)


def test_perturbation_stats_by_one_axis(grid):
    out = perturbation_stats(grid, "size")
    assert list(out.columns) == ["size", "count", "mean", "std"]
    assert list(out["size"]) == ["128", "64"]  # string keys sort lexically, as vflow's sort_values does
    assert list(out["count"]) == [3, 3]
    # 128: mean 2.73 / 3 = 0.91, deviations -0.01, 0, 0.01 -> sqrt(0.0002 / 2) = 0.01
    # 64:  mean 2.46 / 3 = 0.82, deviations -0.02, 0, 0.02 -> sqrt(0.0008 / 2) = 0.02
    assert out["mean"].tolist() == pytest.approx([0.91, 0.82], abs=1e-12)
    assert out["std"].tolist() == pytest.approx([0.01, 0.02], abs=1e-12)


def test_perturbation_stats_by_two_axes_and_by_none(grid):
    both = perturbation_stats(grid, "size", "seed")
    assert list(both.columns) == ["size", "seed", "count", "mean", "std"]
    assert list(zip(both["size"], both["seed"])) == [
        ("128", "0"),
        ("128", "1"),
        ("128", "2"),
        ("64", "0"),
        ("64", "1"),
        ("64", "2"),
    ]
    assert list(both["count"]) == [1] * 6
    assert both["mean"].tolist() == pytest.approx([0.90, 0.91, 0.92, 0.80, 0.82, 0.84])
    assert both["std"].isna().all()  # one value per group: ddof=1 leaves no spread

    whole = perturbation_stats(grid)
    assert list(whole.columns) == ["index", "count", "mean", "std"]
    assert whole["index"].tolist() == [True]  # vflow groups everything under the key True
    assert whole.loc[0, "count"] == 6
    assert whole.loc[0, "mean"] == pytest.approx(0.865)
    assert whole.loc[0, "std"] == pytest.approx(math.sqrt(0.00263))


def test_stability_table_summarises_each_unit(grid):
    table = stability_table(grid, AXES)
    assert list(table.columns[: len(UNIT)]) == list(UNIT)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["cells"] == 6
    assert row["mean"] == pytest.approx(0.865)
    assert row["sd"] == pytest.approx(math.sqrt(0.00263))
    # Sorted values 0.80 0.82 0.84 0.90 0.91 0.92; linear percentile positions 5 * 0.025 = 0.125
    # and 5 * 0.975 = 4.875: 0.80 + 0.125 * 0.02 = 0.8025 and 0.91 + 0.875 * 0.01 = 0.91875.
    assert row["q025"] == pytest.approx(0.8025)
    assert row["q975"] == pytest.approx(0.91875)
    assert (row["min"], row["max"]) == (pytest.approx(0.80), pytest.approx(0.92))
    # size: alternative means 0.82 and 0.91, 3 cells each around 0.865:
    # between SS = 3 * 0.045^2 + 3 * 0.045^2 = 0.01215; share = 0.01215 / 0.01315 = 243 / 263.
    assert row["top_axis"] == "size"
    assert row["top_axis_share"] == pytest.approx(243 / 263)


def test_axis_effects_per_axis(grid):
    effects = axis_effects(grid, AXES).set_index("axis")
    assert list(effects.index) == ["seed", "size"]
    # seed: means (0.80 + 0.90) / 2 = 0.85, 0.865, 0.88, 2 cells each:
    # between SS = 2 * (0.015^2 + 0 + 0.015^2) = 0.0009; share 0.0009 / 0.01315 = 18 / 263;
    # sd (ddof=0) = sqrt((0.015^2 + 0 + 0.015^2) / 3) = sqrt(0.00015).
    assert effects.loc["seed", "alternatives"] == 3
    assert effects.loc["seed", "effect_sd"] == pytest.approx(math.sqrt(0.00015))
    assert effects.loc["seed", "effect_range"] == pytest.approx(0.03)
    assert effects.loc["seed", "share"] == pytest.approx(0.0009 / TOTAL_SS)
    assert effects.loc["size", "alternatives"] == 2
    assert effects.loc["size", "effect_sd"] == pytest.approx(0.045)
    assert effects.loc["size", "effect_range"] == pytest.approx(0.09)
    assert effects.loc["size", "share"] == pytest.approx(0.01215 / TOTAL_SS)


def test_missing_values_do_not_count_and_a_failed_check_only_leaves_the_passing_view(grid):
    extra = pd.DataFrame(
        [
            unit_row(cell="seed=3,size=256", seed="3", size="256", value=0.01, passed=False),
            unit_row(cell="seed=4,size=256", seed="4", size="256", value=float("nan")),
        ]
    )
    noisy = pd.concat([grid, extra], ignore_index=True)
    passing = stability_table(noisy, AXES, passing_only=True)
    expected = stability_table(grid, AXES).assign(n_pass=6, pass_rate=6 / 7)
    pd.testing.assert_frame_equal(passing, expected)
    pd.testing.assert_frame_equal(
        axis_effects(noisy, AXES, passing_only=True), axis_effects(grid, AXES).assign(pass_rate=6 / 7)
    )
    everything = stability_table(noisy, AXES).iloc[0]
    assert (everything["cells"], everything["n_pass"]) == (7, 6)
    assert everything["min"] == 0.01 and everything["mean"] == pytest.approx((5.19 + 0.01) / 7)


# Four seeds, three models: "steady" always passes its check, "shaky" passes in seeds 0 and 2, "never" in
# none. Values per seed (AUROC on test):
CHECKED = {
    "steady": ([0.90, 0.91, 0.92, 0.93], [True] * 4),
    "shaky": ([0.85, 0.60, 0.87, 0.62], [True, False, True, False]),
    "never": ([0.70, 0.71, 0.72, 0.73], [False] * 4),
}
STEADY, SHAKY, NEVER = (f"{name} / linear" for name in CHECKED)


@pytest.fixture
def checked() -> pd.DataFrame:
    rows = [
        unit_row(cell=f"seed={seed}", seed=str(seed), model=model, value=value, passed=passed)
        for model, (values, verdicts) in CHECKED.items()
        for seed, (value, passed) in enumerate(zip(values, verdicts))
    ]
    return pd.DataFrame(rows)


def test_stability_covers_every_cell_with_the_pass_rate_beside_it(checked):
    table = stability_table(checked, ["seed"]).set_index("model")
    assert list(table.index) == ["never", "shaky", "steady"]  # a model that never passes is kept
    assert table["cells"].tolist() == [4, 4, 4]
    assert table["n_pass"].tolist() == [0, 2, 4]
    assert table["pass_rate"].tolist() == [0.0, 0.5, 1.0]
    assert table.loc["shaky", "mean"] == pytest.approx((0.85 + 0.60 + 0.87 + 0.62) / 4)
    assert (table.loc["shaky", "min"], table.loc["never", "max"]) == (0.60, 0.73)

    passing = stability_table(checked, ["seed"], passing_only=True).set_index("model")
    assert list(passing.index) == ["shaky", "steady"]
    assert passing["cells"].tolist() == [2, 4]
    assert passing["n_pass"].tolist() == [2, 4] and passing["pass_rate"].tolist() == [0.5, 1.0]
    assert passing.loc["shaky", "mean"] == pytest.approx((0.85 + 0.87) / 2)
    assert passing.loc["shaky", "min"] == 0.85  # the failing cells' low tail is gone


def test_axis_effects_cover_every_cell(checked):
    effects = axis_effects(checked, ["seed"]).set_index("model")
    assert list(effects.index) == ["never", "shaky", "steady"]
    assert effects.loc["shaky", "alternatives"] == 4 and effects.loc["never", "pass_rate"] == 0.0
    passing = axis_effects(checked, ["seed"], passing_only=True).set_index("model")
    assert list(passing.index) == ["shaky", "steady"] and passing.loc["shaky", "alternatives"] == 2


def test_ranks_and_wins_cover_every_cell_with_pass_rates(checked):
    ranks = rank_stability(checked, ["seed"]).set_index("model")
    # Every seed ranks steady > shaky > never, except seeds 1 and 3 where shaky (0.60, 0.62) is last.
    assert ranks.loc[[STEADY, SHAKY, NEVER], "cells"].tolist() == [4, 4, 4]
    assert ranks.loc[[STEADY, SHAKY, NEVER], "mean_rank"].tolist() == pytest.approx([1, 2.5, 2.5])
    assert ranks.loc[[STEADY, SHAKY, NEVER], "n_pass"].tolist() == [4, 2, 0]
    assert ranks.loc[[STEADY, SHAKY, NEVER], "pass_rate"].tolist() == [1.0, 0.5, 0.0]
    assert ranks.loc[STEADY, "ranking_holds"] == 0.5

    passing = rank_stability(checked, ["seed"], passing_only=True).set_index("model")
    assert set(passing.index) == {STEADY, SHAKY}
    assert passing.loc[[STEADY, SHAKY], "cells"].tolist() == [2, 2]  # seeds 0 and 2 hold both
    assert passing.loc[[STEADY, SHAKY], "mean_rank"].tolist() == [1.0, 2.0]
    assert passing.loc[[STEADY, SHAKY], "pass_rate"].tolist() == [1.0, 0.5]

    wins = pairwise_wins(checked, ["seed"]).set_index(["model", "versus"])
    assert len(wins) == 6  # every ordered pair, the never-passing model's included
    assert wins.loc[(SHAKY, NEVER), "wins"] == 0.5 and wins.loc[(SHAKY, NEVER), "cells"] == 4
    assert wins.loc[(SHAKY, NEVER), ["n_pass", "pass_rate"]].tolist() == [0, 0.0]
    assert wins.loc[(STEADY, SHAKY), ["n_pass", "pass_rate"]].tolist() == [2, 0.5]
    passing_wins = pairwise_wins(checked, ["seed"], passing_only=True).set_index(["model", "versus"])
    assert set(passing_wins.index) == {(STEADY, SHAKY), (SHAKY, STEADY)}
    assert passing_wins.loc[(STEADY, SHAKY), ["wins", "cells", "n_pass"]].tolist() == [1.0, 2, 2]


def test_constant_values_have_no_top_axis_share(grid):
    flat = grid.assign(value=0.5, size="64")
    row = stability_table(flat, AXES).iloc[0]
    assert row["sd"] == 0.0
    assert row["top_axis"] == "seed"  # seed still varies, it just moves nothing
    assert row["top_axis_share"] == 0.0
    single = stability_table(grid.iloc[:1], AXES).iloc[0]
    assert single["top_axis"] == "" and np.isnan(single["top_axis_share"]) and np.isnan(single["sd"])


def test_missing_unit_columns_are_named(grid):
    with pytest.raises(ValueError, match="subgroup, metric"):
        stability_table(grid.drop(columns=["subgroup", "metric"]), AXES)


A, B, C = "a / linear", "b / linear", "c / finetune / lora"


@pytest.fixture
def contest() -> pd.DataFrame:
    """Three models over five seeds; seed 3 flips the ranking, seed 4 lacks model c."""
    auroc = {
        ("a", "linear", ""): [0.90, 0.90, 0.90, 0.80, 0.70],
        ("b", "linear", ""): [0.85, 0.85, 0.85, 0.85, 0.80],
        ("c", "finetune", "lora"): [0.70, 0.70, 0.70, 0.90, None],
    }
    # Lower is better; seed 2 is a tie (broken by name, and no win for either).
    ece = {("a", "linear", ""): [0.05, 0.05, 0.10, 0.20], ("b", "linear", ""): [0.10, 0.10, 0.10, 0.10]}
    rows = []
    for metric, models in (("auroc", auroc), ("ece", ece)):
        for (model, protocol, setting), values in models.items():
            for seed, value in enumerate(values):
                if value is not None:
                    fields = {"model": model, "protocol": protocol, "setting": setting, "metric": metric}
                    rows.append(unit_row(cell=f"seed={seed}", seed=str(seed), value=value, **fields))
    return pd.DataFrame(rows)


def test_rank_stability_counts_flips(contest):
    ranks = rank_stability(contest, ["seed"]).set_index(["metric", "model"])
    auroc = ranks.loc["auroc"]
    assert list(auroc.index) == [A, B, C]
    # Ranks per seed: a 1 1 1 3 2, b 2 2 2 2 1, c 3 3 3 1 (absent in seed 4).
    assert auroc["cells"].tolist() == [5, 5, 4]
    assert auroc["mean_rank"].tolist() == pytest.approx([8 / 5, 9 / 5, 10 / 4])
    assert auroc["top_rate"].tolist() == pytest.approx([3 / 5, 1 / 5, 1 / 4])
    # Seeds 0-3 hold all three models; a > b > c in three of them, seed 4 does not count.
    assert auroc["modal_rank"].tolist() == [1, 2, 3]
    assert auroc["ranking_holds"].tolist() == pytest.approx([0.75] * 3)

    ece = ranks.loc["ece"]
    # Lower is better: a first in seeds 0, 1, 2 (tie, by name), b first in seed 3.
    assert ece["mean_rank"].tolist() == pytest.approx([1.25, 1.75])
    assert ece["top_rate"].tolist() == pytest.approx([0.75, 0.25])
    assert ece["ranking_holds"].tolist() == pytest.approx([0.75, 0.75])


def test_pairwise_wins(contest):
    wins = pairwise_wins(contest, ["seed"]).set_index(["metric", "model", "versus"])
    auroc = wins.loc["auroc"]
    # a beats b in seeds 0-2 of 5 shared; a beats c in seeds 0-2 of 4 shared (c lacks seed 4).
    expected = {(A, B): (3 / 5, 5), (B, A): (2 / 5, 5), (A, C): (3 / 4, 4), (C, A): (1 / 4, 4)}
    expected |= {(B, C): (3 / 4, 4), (C, B): (1 / 4, 4)}
    for pair, (share, cells) in expected.items():
        assert auroc.loc[pair, "wins"] == pytest.approx(share)
        assert auroc.loc[pair, "cells"] == cells
    ece = wins.loc["ece"]
    assert ece.loc[(A, B), "wins"] == pytest.approx(0.5)  # seeds 0, 1; seed 2 is a tie
    assert ece.loc[(B, A), "wins"] == pytest.approx(0.25)  # seed 3


# Fleiss (1971) worked example as given on Wikipedia: 10 subjects, 14 raters, 5 categories.
FLEISS_COUNTS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_matches_worked_example():
    # Kappa depends only on the counts, so each item's labels are its categories repeated by count.
    labels = np.stack([np.repeat(np.arange(5), counts) for counts in FLEISS_COUNTS], axis=1)
    agreement = prediction_agreement(labels)
    assert (agreement["raters"], agreement["items"]) == (14, 10)
    assert agreement["fleiss_kappa"] == pytest.approx(0.20993, abs=1e-4)
    assert agreement["disagreement"] == pytest.approx(0.9)  # only subject 1 is unanimous


def test_agreement_perfect_and_hand_checked():
    perfect = prediction_agreement(np.array([[0, 1, 1], [0, 1, 1], [0, 1, 1]]))
    assert perfect["fleiss_kappa"] == pytest.approx(1.0)
    assert perfect["disagreement"] == 0.0 and perfect["pairwise_disagreement"] == 0.0

    # Items: (0,0,0) (0,1,0) (1,1,1) (1,1,0); items 1 and 3 split the raters -> 2 / 4.
    # Pairs: r0-r1 differ on item 1, r0-r2 on item 3, r1-r2 on both: (1/4 + 1/4 + 2/4) / 3 = 1/3.
    # Kappa: per-item agreement 1, 1/3, 1, 1/3 -> 2/3; categories 6/12 each -> expected 1/2;
    # (2/3 - 1/2) / (1 - 1/2) = 1/3.
    mixed = prediction_agreement(np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 0]]))
    assert mixed["disagreement"] == pytest.approx(0.5)
    assert mixed["pairwise_disagreement"] == pytest.approx(1 / 3)
    assert mixed["fleiss_kappa"] == pytest.approx(1 / 3)


def test_agreement_undefined_kappa_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_category = prediction_agreement(np.ones((3, 4), dtype=int))
        one_rater = prediction_agreement(np.array([[0, 1, 2]]))
    assert np.isnan(one_category["fleiss_kappa"]) and one_category["disagreement"] == 0.0
    assert np.isnan(one_rater["fleiss_kappa"]) and np.isnan(one_rater["pairwise_disagreement"])


def test_agreement_rejects_bad_shapes():
    with pytest.raises(ValueError, match="dimension"):
        prediction_agreement(np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="at least one rater and one item"):
        prediction_agreement(np.zeros((2, 0), dtype=int))


def test_ranking_needs_cells_that_identify_each_number(contest):
    with pytest.raises(ValueError, match="several values in one cell"):
        rank_stability(contest, [])  # without the seed axis every seed lands in one cell
    with pytest.raises(ValueError, match="'metric' is not in"):
        pairwise_wins(contest, ["seed"], within=("task", "split"))


def test_perturbation_stats_equal_vflows_on_a_real_grid():
    """The expected table was written by vflow 1.0.0's own ``perturbation_stats`` on the same fixture
    (linear-probe AUROCs of a 30-cell pneumonia grid; ``fixtures/make_vflow_expectation.py``)."""
    fixtures = Path(__file__).parent / "fixtures"
    table = pd.read_csv(fixtures / "probe_auroc_grid.csv")
    expected = pd.read_csv(fixtures / "vflow_perturbation_stats.csv", dtype=str)
    for grouping, rows in expected.groupby("group_by", sort=False):
        group_by = () if grouping == "none" else tuple(grouping.split("+"))
        ours = perturbation_stats(table, *group_by, wrt="auroc")
        assert list(ours.columns) == [*(group_by or ("index",)), "count", "mean", "std"]
        for column in group_by:
            assert ours[column].astype(str).tolist() == rows[column].tolist()
        for column in ("count", "mean", "std"):
            np.testing.assert_allclose(ours[column].to_numpy(float), rows[column].to_numpy(float), rtol=1e-12)
