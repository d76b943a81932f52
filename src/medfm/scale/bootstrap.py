"""Intervals of the scaling exponents from a subject bootstrap of the test set.

The t-intervals of the fits say how closely a power law follows the runs. A second question is how much
a slope depends on which test patients happen to be in the test set. Every run of a task is scored on
the same test examples, so one resample of patients is applied to all runs at once, each run's metric
is recomputed from its saved predictions, and the laws are fitted again; the percentile range of the
refitted exponents is that interval (the subject bootstrap of :mod:`medfm.evaluate.bootstrap`, carried
through to the exponents).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medfm.evaluate.bootstrap import percentile_interval, resampled_metrics, subject_resamples
from medfm.evaluate.predictions import Predictions
from medfm.log import get_logger, progress
from medfm.scale.fit import fit_power_law, law_variables

log = get_logger("scale")

BOOT_COLUMNS = ["boot_low", "boot_high", "boot_fits"]


def load_probe_predictions(cells: Path, runs: pd.DataFrame) -> dict[tuple[str, str], Predictions]:
    """Each run's linear-probe test predictions per task: ``{(cell, task): Predictions}``."""
    found = {}
    for cell in runs["cell"]:
        for path in sorted((cells / cell / "eval" / "predictions").glob("*/*-linear_probe.npz")):
            pred = Predictions.load(path)
            found[(cell, pred.task)] = pred
    return found


def _aligned(predictions: list[Predictions], task: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Each run's labels and probabilities in the first run's example order; None when the runs scored
    different examples."""
    reference = predictions[0].sample_ids
    out = []
    for pred in predictions:
        if len(pred.sample_ids) != len(reference) or set(pred.sample_ids) != set(reference):
            log.warning("task %s: runs were scored on different test examples; no bootstrap", task)
            return None
        position = {sample: i for i, sample in enumerate(pred.sample_ids)}
        order = np.array([position[sample] for sample in reference])
        out.append((pred.y[order], pred.prob[order]))
    return out


def exponent_bootstrap(
    runs: pd.DataFrame,
    predictions: dict[tuple[str, str], Predictions],
    metric: str = "auroc",
    *,
    by: Sequence[str] = ("method", "mix"),
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per task, group of ``by``, law and variable: the ``level`` percentile interval of the exponent over
    ``n_boot`` subject resamples of the test set (columns ``boot_low``, ``boot_high`` and ``boot_fits``,
    the resamples on which the law could be fitted)."""
    by = list(by)
    tasks = sorted({task for _, task in predictions})
    rows = []
    for task in progress(tasks, "exponent bootstrap", unit="tasks"):
        cells = [cell for cell in runs["cell"] if (cell, task) in predictions]
        scored = [predictions[(cell, task)] for cell in cells]
        aligned = _aligned(scored, task) if len(cells) > 1 else None
        if aligned is None:
            continue
        multilabel = scored[0].multilabel
        table = runs.set_index("cell").loc[cells].reset_index()
        exponents: dict[tuple, list[float]] = defaultdict(list)
        draws = list(subject_resamples(scored[0].subjects, n_boot, seed))
        per_cell = [resampled_metrics(y, prob, multilabel, [metric], draws)[:, 0] for y, prob in aligned]
        for values in np.array(per_cell).T:  # one resample: every cell's value
            table["value"] = values
            for keys, group in table.groupby(by):
                keys = keys if isinstance(keys, tuple) else (keys,)
                for law, variables in law_variables(group).items():
                    try:
                        fit = fit_power_law(group, "value", variables)
                    except ValueError:  # a resample where the metric is undefined or not positive
                        continue
                    for name in variables:
                        exponents[(*keys, law, name)].append(fit.exponents[name])
        for (*keys, law, name), samples in exponents.items():
            low, high = percentile_interval(np.asarray(samples), level)
            base = {"task": task, **dict(zip(by, keys)), "metric": metric, "law": law, "variable": name}
            rows.append({**base, "boot_low": low, "boot_high": high, "boot_fits": len(samples)})
    return pd.DataFrame(rows, columns=["task", *by, "metric", "law", "variable", *BOOT_COLUMNS])
