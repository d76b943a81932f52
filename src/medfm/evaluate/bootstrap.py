"""Subject-level (cluster) bootstrap: confidence intervals and paired model comparisons.

Examples of one subject are correlated (several images of a patient), so a resample draws *subjects*
with replacement and takes every example of each drawn subject; resampling examples independently
would make intervals too narrow. Percentile intervals; a resample on which a metric is undefined (for
instance AUROC when it holds one class) is left out for that metric. Macro AUROC (multi-class and
multi-label tasks) averages the classes that have both outcomes in the whole test set, on every
resample; a resample that lacks an outcome of one of those classes is left out, rather than averaged
over fewer classes (which would mix two estimands in one interval).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from statsmodels.stats.multitest import multipletests

from medfm.errors import ConfigError
from medfm.evaluate.metrics import (
    LOWER_IS_BETTER,
    METRICS,
    auroc_classes,
    check_metric_names,
    compute_metrics,
)


def group_by_subject(subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples grouped by subject: positions ordered by subject, and where each subject's block of that
    order starts and how long it is (subjects numbered in sorted order)."""
    _, subject_of = np.unique(np.asarray(subjects), return_inverse=True)
    subject_of = subject_of.ravel()
    order = np.argsort(subject_of, kind="stable")
    counts = np.bincount(subject_of)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def examples_of(drawn: np.ndarray, groups: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Positions of every example of each ``drawn`` subject (repeats allowed), subject by subject."""
    order, starts, counts = groups
    sizes = counts[drawn]
    # position within its subject's block, for every example drawn
    offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return order[np.repeat(starts[drawn], sizes) + offset]


def subject_resamples(subjects: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` example-index arrays, each the examples of subjects drawn with replacement.

    The same ``subjects``, ``n_boot`` and ``seed`` give the same resamples.
    """
    groups = group_by_subject(subjects)
    count = len(groups[2])
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield examples_of(rng.integers(0, count, size=count), groups)


def resampled_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    multilabel: bool,
    metrics: Sequence[str],
    resamples: Iterable[np.ndarray],
) -> np.ndarray:
    """``[resamples, metrics]``: each metric on each resample (example indices), macro AUROC over the
    classes with both outcomes in all of ``y`` (see the module docstring)."""
    y, prob = np.asarray(y), np.asarray(prob)
    over = auroc_classes(y, multilabel, prob.shape[1])
    values = [compute_metrics(y[idx], prob[idx], multilabel, metrics, auroc_over=over) for idx in resamples]
    return np.array([[v[m] for m in metrics] for v in values], dtype=np.float64).reshape(-1, len(metrics))


def bootstrap_ci(
    y: np.ndarray,
    prob: np.ndarray,
    subjects: np.ndarray,
    multilabel: bool,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metrics: Sequence[str] = METRICS,
) -> dict[str, tuple[float, float, float]]:
    """Metric -> (value on all the data, low, high) with a ``level`` percentile subject-level interval."""
    check_metric_names(metrics)
    y, prob = np.asarray(y), np.asarray(prob)
    _check_inputs(y, subjects, n_boot, level)
    point = compute_metrics(y, prob, multilabel, metrics)
    samples = resampled_metrics(y, prob, multilabel, metrics, subject_resamples(subjects, n_boot, seed))
    result = {}
    for column, metric in enumerate(metrics):
        low, high = percentile_interval(samples[:, column], level)
        result[metric] = (point[metric], low, high)
    return result


def paired_bootstrap(
    y: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    subjects: np.ndarray,
    multilabel: bool,
    metric: str = "auroc",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int]:
    """Compare models a and b on the same subject-level resamples.

    Returns ``value_a``, ``value_b``, ``diff`` (a - b on all the data), ``ci_low`` / ``ci_high`` of the
    difference, ``p_value`` and ``n_boot``. The p-value is one-sided for "a is better than b":
    (1 + resamples where a is not better) / (n_boot + 1), where not better means diff <= 0, or diff >= 0
    for a metric where lower is better (ECE). ``n_boot`` counts the resamples on which both values are
    defined, which are the only ones used.
    """
    check_metric_names([metric])
    y, prob_a, prob_b = np.asarray(y), np.asarray(prob_a), np.asarray(prob_b)
    _check_inputs(y, subjects, n_boot, level)
    value_a = compute_metrics(y, prob_a, multilabel, [metric])[metric]
    value_b = compute_metrics(y, prob_b, multilabel, [metric])[metric]
    resamples = list(subject_resamples(subjects, n_boot, seed))
    diffs = (
        resampled_metrics(y, prob_a, multilabel, [metric], resamples)
        - resampled_metrics(y, prob_b, multilabel, [metric], resamples)
    )[:, 0]
    diffs = diffs[~np.isnan(diffs)]
    not_better = diffs >= 0 if metric in LOWER_IS_BETTER else diffs <= 0
    low, high = percentile_interval(diffs, level)
    p_value = (1 + not_better.sum()) / (len(diffs) + 1) if len(diffs) else float("nan")
    return {
        "value_a": value_a,
        "value_b": value_b,
        "diff": value_a - value_b,
        "ci_low": low,
        "ci_high": high,
        "p_value": float(p_value),
        "n_boot": len(diffs),
    }


def holm_adjusted(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (statsmodels); undefined (NaN) p-values stay
    NaN and do not count in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    defined = ~np.isnan(p)
    if defined.any():
        adjusted[defined] = multipletests(p[defined], method="holm")[1]
    return adjusted


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Central ``level`` percentile range of the defined (non-NaN) samples; NaNs if there are none."""
    defined = samples[~np.isnan(samples)]
    if len(defined) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def _check_inputs(y: np.ndarray, subjects: np.ndarray, n_boot: int, level: float) -> None:
    if len(subjects) != len(y):
        raise ValueError(f"{len(y)} labels but {len(subjects)} subjects")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < level < 1:
        raise ConfigError(f"level must lie strictly between 0 and 1, got {level}")
