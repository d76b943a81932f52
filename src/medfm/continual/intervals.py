"""How stable the stream's numbers are: subject-bootstrap intervals of every summary of the result matrix,
and paired comparisons between strategies.

One resample draws each experience's test subjects with replacement (all examples of a drawn subject move
together, :mod:`medfm.evaluate.bootstrap`) and rescores every saved prediction on it, giving a resampled
matrix; the summaries (:mod:`medfm.continual.metrics`) of the resampled matrices give percentile
intervals. Resamples depend only on the experience and the seed, so every strategy is rescored on the
same ones and differences between strategies are paired.
"""

from __future__ import annotations

import numpy as np

from medfm.continual.metrics import summarise
from medfm.continual.stream import Stream
from medfm.evaluate.bootstrap import percentile_interval, resampled_metrics, subject_resamples


def resampled_matrices(
    predictions: dict[str, np.ndarray],
    stream: Stream,
    metric: str,
    n_boot: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``[n_boot, T, T]`` matrices and ``[n_boot, T]`` starting scores rescored on subject resamples.

    ``predictions`` maps ``"i/j"`` (experience j after step i) and ``"initial/j"`` to test probabilities;
    missing entries stay NaN."""
    T = len(stream.experiences)
    matrices = np.full((n_boot, T, T), np.nan)
    initial = np.full((n_boot, T), np.nan)
    for j, experience in enumerate(stream.experiences):
        test = experience.splits["test"]
        y = test.y.numpy()
        multilabel = stream.heads[experience.head].multilabel
        resamples = list(subject_resamples(test.subjects, n_boot, seed + j))
        for i in [*range(T), None]:
            prob = predictions.get(f"{'initial' if i is None else i}/{j}")
            if prob is None:
                continue
            values = resampled_metrics(y, prob, multilabel, [metric], resamples)[:, 0]
            if i is None:
                initial[:, j] = values
            else:
                matrices[:, i, j] = values
    return matrices, initial


def resampled_summaries(matrices: np.ndarray, initial: np.ndarray) -> dict[str, np.ndarray]:
    """Each summary (:func:`medfm.continual.metrics.summarise`) of every resampled matrix, by summary."""
    samples = [summarise(m, i) for m, i in zip(matrices, initial)]
    return {key: np.array([s[key] for s in samples]) for key in samples[0]}


def summary_intervals(
    summaries: dict[str, np.ndarray], level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile interval of each summary over the resamples."""
    return {key: percentile_interval(values, level) for key, values in summaries.items()}


def paired_difference(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], key: str, level: float = 0.95
) -> tuple[float, float]:
    """Interval of summary ``key`` of strategy a minus that of b, over the same resamples."""
    return percentile_interval(a[key] - b[key], level)
