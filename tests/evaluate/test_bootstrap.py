"""Subject-level bootstrap: resamples keep subjects whole, intervals behave, paired tests decide."""

from __future__ import annotations

import numpy as np
import pytest

from medfm.errors import ConfigError
from medfm.evaluate.bootstrap import bootstrap_ci, paired_bootstrap, subject_resamples
from medfm.evaluate.metrics import METRICS


def _binary(n: int, seed: int, noise: float = 0.25):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, _predict(y, noise, rng)


def _predict(y: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, noise, len(y)), 0, 1)
    return np.stack([1 - p, p], axis=1)


def _width(interval):
    _, low, high = interval
    return high - low


def test_resamples_take_whole_subjects_and_are_deterministic():
    subjects = np.array(["a", "a", "a", "b", "c", "c", "d"], dtype=object)
    sizes = {"a": 3, "b": 1, "c": 2, "d": 1}
    first = list(subject_resamples(subjects, 50, seed=3))
    assert len(first) == 50
    for idx in first:
        drawn, counts = np.unique(subjects[idx], return_counts=True)
        # every subject appears a whole number of times its size, and 4 subjects are drawn in all
        assert all(count % sizes[s] == 0 for s, count in zip(drawn, counts))
        assert sum(count // sizes[s] for s, count in zip(drawn, counts)) == 4
    again = list(subject_resamples(subjects, 50, seed=3))
    other = list(subject_resamples(subjects, 50, seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_interval_contains_value_and_is_deterministic():
    y, prob = _binary(400, seed=0)
    subjects = np.arange(400) // 2
    result = bootstrap_ci(y, prob, subjects, multilabel=False, n_boot=200, seed=1)
    assert list(result) == list(METRICS)
    for metric, (value, low, high) in result.items():
        assert low <= value <= high, metric
        assert low < high, metric
    auroc = {"metrics": ["auroc"], "n_boot": 200}
    assert bootstrap_ci(y, prob, subjects, False, seed=1, **auroc)["auroc"] == result["auroc"]
    assert bootstrap_ci(y, prob, subjects, False, seed=2, **auroc)["auroc"] != result["auroc"]


def test_interval_shrinks_as_data_grows():
    small = bootstrap_ci(*_binary(100, seed=0), np.arange(100), False, n_boot=200, metrics=["auroc"])
    large = bootstrap_ci(*_binary(2000, seed=0), np.arange(2000), False, n_boot=200, metrics=["auroc"])
    # the width goes as 1 / sqrt(N): about 4.5 times narrower for 20 times the data
    assert _width(large["auroc"]) < 0.4 * _width(small["auroc"])


def test_copies_of_a_subject_move_together():
    y, prob = _binary(150, seed=5)
    copies_y, copies_prob = np.repeat(y, 5), np.repeat(prob, 5, axis=0)
    same_subject = np.repeat(np.arange(150), 5)
    clustered = bootstrap_ci(copies_y, copies_prob, same_subject, False, n_boot=200, metrics=["auroc"])
    independent = bootstrap_ci(copies_y, copies_prob, np.arange(750), False, n_boot=200, metrics=["auroc"])
    # five copies carry the information of one example: the honest interval is about sqrt(5) wider
    assert _width(clustered["auroc"]) > 1.5 * _width(independent["auroc"])


def test_undefined_metric_is_all_nan():
    y = np.zeros(60, dtype=int)
    _, prob = _binary(60, seed=0)
    result = bootstrap_ci(y, prob, np.arange(60), False, n_boot=50)
    assert all(np.isnan(v) for v in result["auroc"])
    assert result["accuracy"][1] <= result["accuracy"][0] <= result["accuracy"][2]


def test_multilabel_interval():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, (300, 3))
    prob = np.clip(0.3 * y + 0.7 * rng.random((300, 3)), 0, 1)
    value, low, high = bootstrap_ci(y, prob, np.arange(300) // 3, True, n_boot=200)["auroc"]
    assert 0.6 < low <= value <= high < 0.95


def test_paired_bootstrap_finds_the_better_model():
    y, good = _binary(300, seed=0, noise=0.15)
    poor = _predict(y, noise=0.6, rng=np.random.default_rng(1))
    subjects = np.arange(300) // 3
    result = paired_bootstrap(y, good, poor, subjects, False, n_boot=200)
    assert set(result) == {"value_a", "value_b", "diff", "ci_low", "ci_high", "p_value", "n_boot"}
    assert result["diff"] == pytest.approx(result["value_a"] - result["value_b"])
    assert result["value_a"] > result["value_b"]
    assert result["p_value"] < 0.05
    assert 0 < result["ci_low"] <= result["diff"] <= result["ci_high"]
    assert result["n_boot"] == 200
    reverse = paired_bootstrap(y, poor, good, subjects, False, n_boot=200)
    assert reverse["p_value"] > 0.95


def test_paired_bootstrap_same_predictions_is_not_significant():
    y, prob = _binary(300, seed=0)
    result = paired_bootstrap(y, prob, prob.copy(), np.arange(300), False, n_boot=200, seed=3)
    assert result["diff"] == 0
    assert result["p_value"] > 0.2
    again = paired_bootstrap(y, prob, prob.copy(), np.arange(300), False, n_boot=200, seed=3)
    assert again == result


def test_paired_bootstrap_lower_is_better_for_ece():
    rng = np.random.default_rng(2)
    guess = rng.integers(0, 2, 400)
    y = np.where(rng.random(400) < 0.2, 1 - guess, guess)  # the guess is right 80 % of the time
    calibrated = np.stack([0.8 - 0.6 * guess, 0.2 + 0.6 * guess], axis=1)
    overconfident = np.stack([0.99 - 0.98 * guess, 0.01 + 0.98 * guess], axis=1)
    result = paired_bootstrap(y, calibrated, overconfident, np.arange(400), False, metric="ece", n_boot=200)
    assert result["value_a"] < result["value_b"]
    assert result["p_value"] < 0.05


def test_bad_options_raise():
    y, prob = _binary(20, seed=0)
    with pytest.raises(ConfigError, match="level"):
        bootstrap_ci(y, prob, np.arange(20), False, n_boot=10, level=95)
    with pytest.raises(ConfigError, match="n_boot"):
        paired_bootstrap(y, prob, prob, np.arange(20), False, n_boot=0)


def test_macro_auroc_interval_keeps_every_class_of_the_test_set_on_every_resample():
    # classes 0 and 1 are separated perfectly, class 2 (two subjects) at chance: macro AUROC (1 + 1 + 0.5) / 3
    rows = {0: [0.6, 0.0, 0.4], 1: [0.0, 0.6, 0.4], 2: [0.3, 0.3, 0.4]}  # class 2's score ties
    y = np.array([0] * 20 + [1] * 20 + [2] * 2)
    prob = np.array([rows[c] for c in y])
    subjects = np.arange(len(y))
    value, low, high = bootstrap_ci(y, prob, subjects, False, n_boot=400, metrics=["auroc"])["auroc"]
    # a resample without class 2 would score 1.0 over two classes: it is left out, not mixed in
    assert [value, low, high] == pytest.approx([2.5 / 3] * 3)
