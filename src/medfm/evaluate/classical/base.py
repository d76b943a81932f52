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
    if not train.info.multilabel and prob.shape[1] != train.num_outputs:
        # a class absent from the training split gets probability 0 (check_splits allows absent classes)
        full = np.zeros((len(prob), train.num_outputs))
        full[:, model.classes_] = prob
        prob = full
    return prob
