"""The NumPy metrics agree with scikit-learn, handle ties, and give NaN (not errors) when undefined."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from medfm.errors import ConfigError
from medfm.evaluate.metrics import METRICS, average_ranks, compute_metrics

N = 300


def _binary(rng, tied: bool):
    y = rng.integers(0, 2, N)
    p = np.clip(0.3 * y + 0.7 * rng.random(N), 0, 1)
    if tied:
        p = np.round(p, 1)
    return y, np.stack([1 - p, p], axis=1)


def _multiclass(rng, tied: bool, classes: int = 4):
    y = rng.integers(0, classes, N)
    alpha = np.ones((N, classes)) + 2.0 * (y[:, None] == np.arange(classes))
    prob = np.array([rng.dirichlet(a) for a in alpha])
    if tied:  # multiples of 0.1 that still sum to 1
        prob = np.array([rng.multinomial(10, p) / 10 for p in prob])
    return y, prob


def _multilabel(rng, tied: bool, labels: int = 3):
    y = rng.integers(0, 2, (N, labels))
    prob = np.clip(0.3 * y + 0.7 * rng.random((N, labels)), 0, 1)
    if tied:
        prob = np.round(prob, 1)
    return y, prob


@pytest.mark.parametrize("tied", [False, True])
def test_binary_matches_sklearn(tied):
    y, prob = _binary(np.random.default_rng(1), tied)
    pred = prob.argmax(axis=1)
    got = compute_metrics(y, prob, multilabel=False)
    assert list(got) == list(METRICS)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, prob[:, 1]), abs=1e-9)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-9)
    assert got["f1"] == pytest.approx(f1_score(y, pred), abs=1e-9)
    assert got["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-9)
    assert 0.6 < got["auroc"] < 0.95  # informative but imperfect predictions: a real comparison


@pytest.mark.parametrize("tied", [False, True])
def test_multiclass_matches_sklearn(tied):
    y, prob = _multiclass(np.random.default_rng(2), tied)
    pred = prob.argmax(axis=1)
    got = compute_metrics(y, prob, multilabel=False)
    expected_auroc = roc_auc_score(y, prob, multi_class="ovr", average="macro")
    assert got["auroc"] == pytest.approx(expected_auroc, abs=1e-9)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-9)
    expected_f1 = f1_score(y, pred, average="macro", labels=range(4), zero_division=0)
    assert got["f1"] == pytest.approx(expected_f1, abs=1e-9)
    assert got["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-9)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_multiclass_with_absent_class_averages_present_classes():
    rng = np.random.default_rng(3)
    y, prob = _multiclass(rng, tied=False)
    y = np.where(y == 3, 0, y)  # class 3 never occurs but is still scored and predicted
    pred = prob.argmax(axis=1)
    assert (pred == 3).any()
    got = compute_metrics(y, prob, multilabel=False)
    expected_auroc = np.mean([roc_auc_score(y == c, prob[:, c]) for c in range(3)])
    assert got["auroc"] == pytest.approx(expected_auroc, abs=1e-9)
    expected_f1 = f1_score(y, pred, average="macro", labels=range(4), zero_division=0)
    assert got["f1"] == pytest.approx(expected_f1, abs=1e-9)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-9)


@pytest.mark.parametrize("tied", [False, True])
def test_multilabel_matches_per_label_sklearn(tied):
    y, prob = _multilabel(np.random.default_rng(4), tied)
    pred = prob >= 0.5
    got = compute_metrics(y, prob, multilabel=True)

    def per_label(metric):
        return np.mean([metric(y[:, k], pred[:, k]) for k in range(y.shape[1])])

    assert got["auroc"] == pytest.approx(roc_auc_score(y, prob, average="macro"), abs=1e-9)
    assert got["accuracy"] == pytest.approx(per_label(accuracy_score), abs=1e-9)
    assert got["balanced_accuracy"] == pytest.approx(per_label(balanced_accuracy_score), abs=1e-9)
    assert got["f1"] == pytest.approx(per_label(f1_score), abs=1e-9)
    assert got["mcc"] == pytest.approx(per_label(matthews_corrcoef), abs=1e-9)


def test_average_ranks_match_scipy_with_ties():
    x = np.round(np.random.default_rng(5).random((50, 3)), 1)
    assert np.allclose(average_ranks(x), rankdata(x, axis=0))


def test_ece_hand_computed():
    # confidences 0.95, 0.95 (bin 14), 0.62, 0.64 (bin 9), 0.55 (bin 8); correct 1, 0, 1, 1, 1
    y = np.array([1, 0, 1, 1, 0])
    p = np.array([0.95, 0.95, 0.62, 0.64, 0.45])
    binary = np.stack([1 - p, p], axis=1)
    expected = 2 / 5 * abs(0.5 - 0.95) + 2 / 5 * abs(1 - 0.63) + 1 / 5 * abs(1 - 0.55)  # 0.418
    assert compute_metrics(y, binary, False, ["ece"])["ece"] == pytest.approx(expected, abs=1e-12)

    top_label = np.array([[0.7, 0.2, 0.1], [0.3, 0.62, 0.08]])  # right at 0.7, wrong at 0.62
    expected = 1 / 2 * abs(1 - 0.7) + 1 / 2 * abs(0 - 0.62)
    got = compute_metrics(np.array([0, 2]), top_label, False, ["ece"])["ece"]
    assert got == pytest.approx(expected, abs=1e-12)

    # multi-label: mean of per-label ECEs; label 2 has confidence max(p, 1 - p) = 0.9
    labels = np.stack([y, np.ones(5), np.zeros(5)], axis=1)
    probs = np.stack([p, np.full(5, 0.8), np.full(5, 0.1)], axis=1)
    got = compute_metrics(labels, probs, True, ["ece"])["ece"]
    assert got == pytest.approx((0.418 + 0.2 + 0.1) / 3, abs=1e-12)


def test_single_class_gives_nan_auroc_without_warnings():
    rng = np.random.default_rng(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, prob = _binary(rng, tied=False)
        binary = compute_metrics(np.zeros(N, dtype=int), prob, multilabel=False)
        _, prob4 = _multiclass(rng, tied=False)
        multiclass = compute_metrics(np.full(N, 2), prob4, multilabel=False)
        y, prob3 = _multilabel(rng, tied=False)
        y[:, 0] = 1
        partly = compute_metrics(y, prob3, multilabel=True)
        none = compute_metrics(np.zeros((N, 3)), prob3, multilabel=True)
    assert np.isnan(binary["auroc"]) and np.isnan(multiclass["auroc"]) and np.isnan(none["auroc"])
    pred = prob.argmax(axis=1)
    assert binary["accuracy"] == pytest.approx(accuracy_score(np.zeros(N), pred))
    assert binary["mcc"] == 0.0  # scikit-learn's value for constant labels
    # a label with one outcome drops out of the AUROC macro average only
    assert partly["auroc"] == pytest.approx(roc_auc_score(y[:, 1:], prob3[:, 1:]), abs=1e-9)


def test_metric_subset_and_unknown_names():
    y, prob = _binary(np.random.default_rng(7), tied=False)
    assert list(compute_metrics(y, prob, False, ["mcc", "auroc"])) == ["mcc", "auroc"]
    with pytest.raises(ConfigError, match="brier"):
        compute_metrics(y, prob, False, ["auroc", "brier"])
