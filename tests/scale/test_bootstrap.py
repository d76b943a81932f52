"""Exponent intervals from a subject bootstrap of the test set: resamples shared across runs, runs
aligned by example, and a clear skip when runs were scored on different examples."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfm.evaluate.predictions import Predictions
from medfm.scale.bootstrap import exponent_bootstrap
from medfm.scale.fit import scaling_fits

PARAMETERS = (1e5, 1e6, 1e7)


def make_runs() -> pd.DataFrame:
    rows = []
    for i, parameters in enumerate(PARAMETERS):
        for j, pictures in enumerate((1e3, 1e4)):
            rows.append(
                {
                    "cell": f"c{2 * i + j}",
                    "method": "mae",
                    "mix": "all",
                    "parameters": parameters,
                    "pictures": pictures,
                    "train_flops": parameters * pictures,
                }
            )
    return pd.DataFrame(rows)


def make_predictions(runs: pd.DataFrame, shuffle: bool = False) -> dict[tuple[str, str], Predictions]:
    """Larger models separate the classes better: AUROC rises with parameters, not with pictures."""
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(150), 2).astype(str)  # two examples per patient
    y = np.repeat(rng.integers(0, 2, 150), 2)
    noise = rng.normal(size=len(y))
    out = {}
    for k, run in runs.iterrows():
        strength = 0.4 * np.log10(run["parameters"]) - 1.5
        score = 1 / (1 + np.exp(-(strength * (2 * y - 1) + noise)))
        order = np.random.default_rng(k).permutation(len(y)) if shuffle else np.arange(len(y))
        out[(run["cell"], "task")] = Predictions(
            task="task",
            model="m",
            protocol="linear_probe",
            classes=("a", "b"),
            multilabel=False,
            y=y[order],
            prob=np.stack([1 - score, score], axis=1)[order],
            subjects=subjects[order],
            sample_ids=np.array([f"s{i}" for i in range(len(y))])[order],
        )
    return out


def points_of(runs, predictions) -> pd.DataFrame:
    from sklearn.metrics import roc_auc_score

    values = [roc_auc_score(p.y, p.prob[:, 1]) for p in (predictions[(c, "task")] for c in runs["cell"])]
    return runs.assign(task="task", metric="auroc", value=values)


def test_intervals_surround_the_exponents_and_follow_the_truth():
    runs = make_runs()
    predictions = make_predictions(runs)
    boot = exponent_bootstrap(runs, predictions, "auroc", n_boot=100)
    fits = scaling_fits(points_of(runs, predictions)).merge(
        boot, on=["task", "method", "mix", "metric", "law", "variable"]
    )
    assert set(fits["variable"]) == {"parameters", "pictures", "train_flops"}
    assert (fits["boot_fits"] == 100).all()
    assert ((fits["boot_low"] <= fits["exponent"]) & (fits["exponent"] <= fits["boot_high"])).all()
    parameters = fits[fits["variable"] == "parameters"].iloc[0]
    assert parameters["boot_low"] > 0  # bigger models help on every resample
    pictures = fits[fits["variable"] == "pictures"].iloc[0]
    assert abs(pictures["exponent"]) < 1e-9  # both fractions of a size predict alike


def test_runs_are_aligned_by_example_not_by_row_order():
    runs = make_runs()
    plain = exponent_bootstrap(runs, make_predictions(runs), "auroc", n_boot=50)
    shuffled = exponent_bootstrap(runs, make_predictions(runs, shuffle=True), "auroc", n_boot=50)
    pd.testing.assert_frame_equal(plain, shuffled)


def test_runs_scored_on_different_examples_are_not_bootstrapped(caplog):
    runs = make_runs()
    predictions = make_predictions(runs)
    first = predictions[("c0", "task")]
    first.sample_ids = np.array([f"other{i}" for i in range(len(first.y))])
    boot = exponent_bootstrap(runs, predictions, "auroc", n_boot=10)
    assert boot.empty
    assert "different test examples" in caplog.text
