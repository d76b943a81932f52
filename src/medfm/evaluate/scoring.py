"""Turn predictions into result rows (the columns of ``predictions.RESULT_COLUMNS``), one per metric.

:func:`score` scores one run with subject-level bootstrap intervals on the whole test set, on each
flagged eval set and on each large enough subgroup; :func:`score_draws` summarises repeated few-shot
draws by their spread across draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfm.evaluate.bootstrap import bootstrap_ci, percentile_interval
from medfm.evaluate.metrics import METRICS, compute_metrics
from medfm.evaluate.predictions import Predictions

TEST_SET = "test"
ALL = "all"


def score(
    pred: Predictions,
    modality: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_subgroup: int = 20,
    whole_set: str = TEST_SET,
) -> list[dict]:
    """Rows for every metric with 95 % subject-level bootstrap intervals.

    Eval set ``whole_set`` (``"test"``, or ``"val"`` for validation predictions) is every example
    (subgroup ``"all"``); each flag of ``pred.flags`` is an eval set
    of the examples where it is True (skipped when there are none); each value of each group column with
    at least ``min_subgroup`` examples is a subgroup ``"<column>=<value>"`` of the test set.
    """
    subsets = [(whole_set, ALL, np.ones(len(pred.y), dtype=bool))]
    subsets += [(name, ALL, np.asarray(flag, dtype=bool)) for name, flag in pred.flags.items()]
    for column, values in pred.groups.items():
        values = np.asarray(values).astype(str)  # as saved predictions hold them; None becomes "None"
        kinds, counts = np.unique(values, return_counts=True)
        subsets += [
            (whole_set, f"{column}={kind}", values == kind)
            for kind, count in zip(kinds, counts)
            if count >= min_subgroup
        ]
    rows = []
    for eval_set, subgroup, mask in subsets:
        if not mask.any():
            continue
        part = pred.select(mask)
        intervals = bootstrap_ci(part.y, part.prob, part.subjects, part.multilabel, n_boot=n_boot, seed=seed)
        rows += [
            _row(part, modality, eval_set, subgroup, metric, value, low, high)
            for metric, (value, low, high) in intervals.items()
        ]
    return rows


def score_draws(preds: Sequence[Predictions], modality: str) -> list[dict]:
    """Rows for repeated few-shot draws of one setting, on the whole test set.

    ``value`` is the mean over draws of the metric; ``ci_low`` / ``ci_high`` are the 2.5 and 97.5
    percentiles over draws (the spread due to which examples were drawn, not a bootstrap interval).
    Draws where a metric is undefined are left out for that metric.
    """
    if not preds:
        raise ValueError("score_draws needs at least one draw")
    first = preds[0]
    for other in preds[1:]:
        if other.key != first.key or len(other.y) != len(first.y):
            raise ValueError(f"draws of different runs or test sets: {first.key} and {other.key}")
    per_draw = np.array([[compute_metrics(p.y, p.prob, p.multilabel)[m] for m in METRICS] for p in preds])
    rows = []
    for column, metric in enumerate(METRICS):
        values = per_draw[:, column]
        defined = values[~np.isnan(values)]
        mean = float(defined.mean()) if len(defined) else float("nan")
        low, high = percentile_interval(values, level=0.95)
        rows.append(_row(first, modality, TEST_SET, ALL, metric, mean, low, high))
    return rows


def _row(
    pred: Predictions,
    modality: str,
    eval_set: str,
    subgroup: str,
    metric: str,
    value: float,
    low: float,
    high: float,
) -> dict:
    return {
        "task": pred.task,
        "modality": modality,
        "model": pred.model,
        "protocol": pred.protocol,
        "setting": pred.setting,
        "eval_set": eval_set,
        "subgroup": subgroup,
        "metric": metric,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n": len(pred.y),
        "n_subjects": len(np.unique(pred.subjects)),
    }
