"""Few-shot: k labelled training examples per class, drawn several times, a linear classifier on top.

With one or a few examples per class the BatchNorm of the linear probe has no statistics of its own, so
few-shot standardises features with the statistics of the whole training split, labels unused (as the
probe's BatchNorm does, and as SimpleShot centres features), and fits scikit-learn's logistic
regression. Without that, a large component shared by every feature (95 % of the norm for the MAE
encoder here) drowns the differences between images. Multi-label tasks draw k examples with and k
without each label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from medfm.evaluate.predictions import with_all_classes


@dataclass
class FewShotConfig:
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    draws: int = 5
    c: float = 1.0  # inverse regularisation of the logistic regression


def draw_shots(y: np.ndarray, k: int, multilabel: bool, rng: np.random.Generator) -> np.ndarray:
    """Indices of k examples per class (fewer where a class has fewer), without replacement."""
    groups = (
        [np.flatnonzero(y[:, j] == v) for j in range(y.shape[1]) for v in (1, 0)]
        if multilabel
        else [np.flatnonzero(y == c) for c in np.unique(y)]
    )
    picks = [rng.choice(g, size=min(k, len(g)), replace=False) for g in groups if len(g)]
    return np.unique(np.concatenate(picks))


def few_shot(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    outputs: int,
    multilabel: bool,
    config: FewShotConfig,
    seed: int = 0,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(k, draw, test probabilities)`` for every shot count and draw."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    for k in config.shots:
        for draw in range(config.draws):
            rng = np.random.default_rng([seed, k, draw])
            index = draw_shots(train_y, k, multilabel, rng)
            model = LogisticRegression(C=config.c, max_iter=1000)
            if multilabel:
                model = OneVsRestClassifier(model)
            model.fit(train_x[index], train_y[index])
            prob = model.predict_proba(test_x)
            yield k, draw, prob if multilabel else with_all_classes(prob, model.classes_, outputs)
