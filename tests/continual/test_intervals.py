import math

import numpy as np

from medfm.continual.intervals import (
    paired_difference,
    resampled_matrices,
    resampled_summaries,
    summary_intervals,
)
from medfm.continual.report import compare

from .streams import task_stream


def predictions_for(stream, quality: float, seed: int):
    """Probabilities that rank the true class first with the given share of examples (per entry)."""
    rng = np.random.default_rng(seed)
    out = {}
    for j, experience in enumerate(stream.experiences):
        y = experience.splits["test"].y.numpy()
        classes = len(experience.classes)
        for key in [f"initial/{j}", *(f"{i}/{j}" for i in range(3))]:
            prob = rng.random((len(y), classes))
            good = rng.random(len(y)) < quality
            prob[good, y[good]] += 1.0
            out[key] = prob / prob.sum(1, keepdims=True)
    return out


def test_resamples_rescore_every_entry_and_are_shared_by_strategies():
    stream = task_stream()
    good = resampled_matrices(predictions_for(stream, 0.9, 0), stream, "auroc", 50, seed=0)
    again = resampled_matrices(predictions_for(stream, 0.9, 0), stream, "auroc", 50, seed=0)
    assert good[0].shape == (50, 3, 3) and good[1].shape == (50, 3)
    np.testing.assert_array_equal(good[0], again[0])  # same seed, same resamples
    intervals = summary_intervals(resampled_summaries(*good))
    low, high = intervals["acc"]
    assert 0.8 < low < high <= 1.0
    poor = resampled_matrices(predictions_for(stream, 0.2, 1), stream, "auroc", 50, seed=0)
    low, high = paired_difference(resampled_summaries(*good), resampled_summaries(*poor), "acc")
    assert 0 < low < high  # the better strategy wins on every resample pairing


def test_missing_entries_stay_missing():
    stream = task_stream()
    predictions = {k: v for k, v in predictions_for(stream, 0.9, 0).items() if k.startswith("2/")}
    matrices, initial = resampled_matrices(predictions, stream, "auroc", 10, seed=0)
    assert np.isnan(matrices[:, :2]).all() and np.isfinite(matrices[:, 2]).all() and np.isnan(initial).all()


def test_comparisons_report_forgetting_differences_and_acc_gaps():
    summaries = {
        "naive": {"acc": 0.70, "forgetting": 0.20},
        "joint": {"acc": 0.80, "forgetting": math.nan},
        "replay": {"acc": 0.78, "forgetting": 0.05},
    }
    rows = {(r["strategy"], r["measure"]): r["value"] for r in compare(summaries, {})}
    assert math.isclose(rows[("replay", "forgetting difference")], -0.15)
    assert rows[("replay", "share of forgetting removed")] == 0.75
    assert math.isclose(rows[("replay", "ACC difference")], -0.02)
    assert math.isclose(rows[("naive", "ACC difference")], -0.10)
    assert ("joint", "forgetting difference") not in rows  # joint has no forgetting
