"""Classical baselines: customary hand-made features and a scikit-learn model, run beside every encoder.

A baseline is a stateless feature function (one row per example, NaN allowed where the estimator takes
it) and a factory for an unfitted scikit-learn classifier. :func:`fit_predict` fits it on the training
split and returns test probabilities; multi-label tasks get one classifier per label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.multiclass import OneVsRestClassifier

from medfm.evaluate.predictions import with_all_classes
from medfm.evaluate.tasks.base import TaskData
from medfm.registry import Registry


@dataclass(frozen=True)
class Classical:
    features: Callable[[TaskData], np.ndarray]  # [N, F] float features of every example of the data
    estimator: Callable[[int], Any]  # seed -> unfitted classifier with predict_proba
    description: str


CLASSICAL: Registry[Classical] = Registry("classical baseline")


def fit_predict(baseline: Classical, train: TaskData, test: TaskData, seed: int = 0) -> np.ndarray:
    """Fit on ``train``; return test probabilities ``[N, C]`` (or ``[N, K]`` for multi-label tasks)."""
    model = baseline.estimator(seed)
    if train.info.multilabel:
        model = OneVsRestClassifier(model)
    model.fit(baseline.features(train), train.y)
    prob = model.predict_proba(baseline.features(test))
    if train.info.multilabel:
        return prob
    return with_all_classes(prob, model.classes_, train.num_outputs)  # check_splits allows absent classes
