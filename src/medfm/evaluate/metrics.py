"""Classification metrics of the downstream benchmark, vectorised for thousands of bootstrap resamples.

scikit-learn is the reference: the tests check every metric except ECE against it (``roc_auc_score``,
``accuracy_score``, ``balanced_accuracy_score``, ``f1_score(zero_division=0)``, ``matthews_corrcoef``).
Calling scikit-learn itself would be too slow inside a bootstrap, so AUROC is the Mann-Whitney U
statistic from average ranks (ties count one half) and the other metrics come from confusion matrices
built with ``np.bincount``.

Single-label tasks take int labels ``[N]`` and class probabilities ``[N, C]``; multi-label tasks take
multi-hot labels ``[N, K]`` and independent probabilities ``[N, K]``, thresholded at 0.5, and average the
per-label binary metric over labels. Macro AUROC averages the classes (labels) given as ``auroc_over``,
by default those with both outcomes in ``y`` (:func:`auroc_classes`), and is ``nan`` when any of them
lacks an outcome: a bootstrap fixes the classes on the whole test set, so that every resample estimates
the same mean. A metric that is undefined on the data (AUROC without both outcomes) is ``nan``;
degenerate cases that scikit-learn defines keep its value (MCC 0 for constant labels or predictions, F1 0
when a class is neither present nor predicted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfm.errors import ConfigError

METRICS = ("auroc", "accuracy", "balanced_accuracy", "f1", "mcc", "ece")
LOWER_IS_BETTER = frozenset({"ece"})
ECE_BINS = 15

_CONFUSION_METRICS = frozenset({"accuracy", "balanced_accuracy", "f1", "mcc"})


def check_metric_names(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")


def compute_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    multilabel: bool,
    metrics: Sequence[str] = METRICS,
    auroc_over: np.ndarray | None = None,
) -> dict[str, float]:
    """Each metric of ``metrics`` on labels ``y`` and probabilities ``prob`` (see the module docstring)."""
    check_metric_names(metrics)
    y = np.asarray(y)
    prob = np.asarray(prob, dtype=np.float64)
    if len(y) != len(prob):
        raise ValueError(f"{len(y)} labels but {len(prob)} rows of probabilities")
    if len(y) == 0:
        return {m: float("nan") for m in metrics}
    if multilabel:
        y = y.astype(bool)
        values = _multilabel_metrics(y, prob, metrics)
    else:
        y = y.astype(np.int64)
        values = _single_label_metrics(y, prob, metrics)
    if "auroc" in metrics:
        over = auroc_classes(y, multilabel, prob.shape[1]) if auroc_over is None else np.asarray(auroc_over)
        outcomes = y[:, over] if multilabel else y[:, None] == over
        values["auroc"] = _macro(auroc_columns(prob[:, over], outcomes))
    return {m: values[m] for m in metrics}


def auroc_classes(y: np.ndarray, multilabel: bool, outputs: int) -> np.ndarray:
    """The columns a macro AUROC averages on labels ``y``: the classes (labels) with both outcomes; a
    binary single-label task scores class 1 alone."""
    y = np.asarray(y)
    if multilabel:
        positives = y.astype(bool).sum(axis=0)
    else:
        positives = np.bincount(y.astype(np.int64), minlength=outputs)
    columns = np.flatnonzero((positives > 0) & (positives < len(y)))
    return columns[columns == 1] if not multilabel and outputs == 2 else columns


def _macro(aurocs: np.ndarray) -> float:
    """The mean AUROC, undefined when any class of the average is (or when there is none)."""
    return float(aurocs.mean()) if len(aurocs) and not np.isnan(aurocs).any() else float("nan")


def _single_label_metrics(y: np.ndarray, prob: np.ndarray, metrics: Sequence[str]) -> dict[str, float]:
    n, c = prob.shape
    pred = prob.argmax(axis=1)
    values = {}
    if _CONFUSION_METRICS.intersection(metrics):
        confusion = np.bincount(y * c + pred, minlength=c * c).reshape(1, c, c)
        f1 = _f1_per_class(confusion)[0]
        values["accuracy"] = float(_accuracy(confusion)[0])
        values["balanced_accuracy"] = float(_balanced_accuracy(confusion)[0])
        values["f1"] = float(f1[1] if c == 2 else f1.mean())
        values["mcc"] = float(_mcc(confusion)[0])
    if "ece" in metrics:
        confidence = prob[np.arange(n), pred]
        values["ece"] = float(expected_calibration_error(confidence[:, None], (pred == y)[:, None])[0])
    return values


def _multilabel_metrics(y: np.ndarray, prob: np.ndarray, metrics: Sequence[str]) -> dict[str, float]:
    k = prob.shape[1]
    pred = prob >= 0.5
    values = {}
    if _CONFUSION_METRICS.intersection(metrics):
        # one 2x2 confusion matrix per label: [K, true, predicted]
        cell = np.arange(k) * 4 + y * 2 + pred
        confusion = np.bincount(cell.ravel(), minlength=4 * k).reshape(k, 2, 2)
        values["accuracy"] = float(_accuracy(confusion).mean())
        values["balanced_accuracy"] = float(_balanced_accuracy(confusion).mean())
        values["f1"] = float(_f1_per_class(confusion)[:, 1].mean())
        values["mcc"] = float(_mcc(confusion).mean())
    if "ece" in metrics:
        confidence = np.maximum(prob, 1 - prob)
        values["ece"] = float(expected_calibration_error(confidence, pred == y).mean())
    return values


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each column of ``x`` ``[N, K]``; tied values share the mean of their ranks."""
    n = len(x)
    order = np.argsort(x, axis=0, kind="stable")
    ordered = np.take_along_axis(x, order, axis=0)
    differs = ordered[1:] != ordered[:-1]
    edge = np.ones((1, x.shape[1]), dtype=bool)
    position = np.arange(n)[:, None]
    # first and last sorted position of the tie group each position belongs to
    first = np.maximum.accumulate(np.where(np.vstack([edge, differs]), position, 0), axis=0)
    last = np.minimum.accumulate(np.where(np.vstack([differs, edge]), position, n)[::-1], axis=0)[::-1]
    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=0)
    return ranks


def auroc_columns(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC ``[K]`` of each score column against its boolean column; ``nan`` without both outcomes."""
    n_pos = positive.sum(axis=0).astype(np.float64)
    n_neg = len(positive) - n_pos
    rank_sum = (average_ranks(scores) * positive).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """ECE ``[K]`` of each column: sum over 15 equal-width bins ``[b/15, (b+1)/15)`` (the last one closed)
    of (bin size / N) * |accuracy - mean confidence|."""
    n, k = confidence.shape
    bins = np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    cell = (np.arange(k) * ECE_BINS + bins).ravel()
    # |n_b * (accuracy_b - confidence_b)| = |sum of correct - sum of confidence| within a bin
    correct_sum = np.bincount(cell, weights=correct.ravel().astype(np.float64), minlength=k * ECE_BINS)
    confidence_sum = np.bincount(cell, weights=confidence.ravel(), minlength=k * ECE_BINS)
    return np.abs(correct_sum - confidence_sum).reshape(k, ECE_BINS).sum(axis=1) / n


def _accuracy(confusion: np.ndarray) -> np.ndarray:
    return np.trace(confusion, axis1=1, axis2=2) / confusion.sum(axis=(1, 2))


def _balanced_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in y (as scikit-learn, which drops classes without truth)."""
    support = confusion.sum(axis=2)
    present = support > 0
    recall = np.diagonal(confusion, axis1=1, axis2=2) / np.where(present, support, 1)
    return (recall * present).sum(axis=1) / present.sum(axis=1)


def _f1_per_class(confusion: np.ndarray) -> np.ndarray:
    """F1 ``[B, C]`` of each class; 0 for a class neither present nor predicted (zero_division=0)."""
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=2) + confusion.sum(axis=1)  # 2 tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def _mcc(confusion: np.ndarray) -> np.ndarray:
    """Multi-class MCC (Gorodkin's R_K, scikit-learn's formula); 0 when labels or predictions are constant."""
    confusion = confusion.astype(np.float64)
    true_sum = confusion.sum(axis=2)
    pred_sum = confusion.sum(axis=1)
    n = true_sum.sum(axis=1)
    correct = np.trace(confusion, axis1=1, axis2=2)
    cov_true_pred = correct * n - (true_sum * pred_sum).sum(axis=1)
    cov_pred_pred = n**2 - (pred_sum**2).sum(axis=1)
    cov_true_true = n**2 - (true_sum**2).sum(axis=1)
    denominator = cov_pred_pred * cov_true_true
    return np.where(denominator > 0, cov_true_pred / np.sqrt(np.maximum(denominator, 1)), 0.0)
