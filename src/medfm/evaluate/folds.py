"""Which examples train, validate and test a task's models: its own split, or cross-validation.

A small dataset's fixed test split is too small to judge a model (a 180-image folder leaves about 18 test
images and AUROC intervals up to 0.5 wide). Cross-validation tests every example once instead: the
examples are cut into k folds by subject with scikit-learn's ``StratifiedGroupKFold`` (a subject's
examples stay in one fold; each fold's class mix stays near the whole's), and fold i is predicted by
models trained on the other folds, of which about one subject in nine (grouped and stratified the same
way) validates. The out-of-fold predictions of the k models are pooled and scored as one test set with
subject-bootstrap intervals. Folds depend on the data alone (a fixed seed), never on the run's seed:
seeds perturb training, not which examples are tested.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from medfm.errors import ConfigError, DataError
from medfm.evaluate.tasks import TaskData
from medfm.log import get_logger

log = get_logger("evaluate")

AUTO = -1  # cv_folds: cross-validate small image folders, keep every other task's split
AUTO_FOLDS = 5
VALIDATION_SHARE = 9  # one training subject in nine validates (train 0.8 / val 0.1 of the fixed split)
FOLD_SEED = 0


@dataclass(frozen=True)
class Fold:
    """Positions in a task's data of the examples each part holds."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def folds_for(data: TaskData, cv_folds: int, below: int) -> int:
    """How many folds ``data`` is cross-validated with (0: its own split).

    ``cv_folds``: :data:`AUTO` cross-validates a folder of images (task ``image_folder``) with a subject
    split and fewer than ``below`` examples in :data:`AUTO_FOLDS` folds; 0 never; k >= 2 always, except
    that a task with an official split refuses it (its split is the point of the task)."""
    if cv_folds == AUTO:
        small = data.name == "image_folder" and data.info.split == "subject" and len(data) < below
        return AUTO_FOLDS if small else 0
    if cv_folds and data.info.split == "official":
        raise ConfigError(
            f"task {data.name} keeps the dataset's official split; cross-validation (cv_folds={cv_folds}) "
            "would test its training examples: set cv_folds=0 or -1"
        )
    return cv_folds


def task_split(data: TaskData) -> list[Fold]:
    """The task's own split as a single fold."""
    return [Fold(*(np.flatnonzero(data.split == part) for part in ("train", "val", "test")))]


def cross_validation(data: TaskData, k: int) -> list[Fold]:
    """``k`` subject-grouped, stratified folds over every example of ``data`` (see the module doc)."""
    subjects = data.subjects.astype(str)
    if len(np.unique(subjects)) < k:
        raise DataError(
            f"task {data.name}: {len(np.unique(subjects))} subjects cannot fill {k} cross-validation folds"
        )
    if not data.info.multilabel:
        for index, name in enumerate(data.classes):
            held = len(np.unique(subjects[data.y == index]))
            if 0 < held < k:
                log.warning(
                    "task %s: class %r has %d subject(s) for %d folds: some folds test none of it",
                    data.name,
                    name,
                    held,
                    k,
                )
    folds = []
    for rest, test in _grouped_split(data, np.arange(len(data)), k):
        inner = min(VALIDATION_SHARE, len(np.unique(subjects[rest])))
        train, val = _grouped_split(data, rest, inner)[0] if inner >= 2 else (rest, rest[:0])
        outcomes = data.select(train).class_counts()
        if not data.info.multilabel and sum(1 for n in outcomes.values() if n) < 2:
            raise DataError(f"task {data.name}: a cross-validation fold trains on one class {outcomes}")
        folds.append(Fold(np.sort(train), np.sort(val), np.sort(test)))
    return folds


def _grouped_split(data: TaskData, rows: np.ndarray, k: int):
    """(kept, held out) positions for each of ``k`` grouped folds of ``rows``, stratified by class
    (multi-label tasks: grouped only)."""
    groups = data.subjects[rows].astype(str)
    if data.info.multilabel:
        splits = GroupKFold(n_splits=k).split(rows, groups=groups)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=FOLD_SEED)
        with warnings.catch_warnings():  # rare classes are reported by cross_validation, once
            warnings.simplefilter("ignore", UserWarning)
            splits = list(splitter.split(rows, data.y[rows], groups))
    return [(rows[kept], rows[held]) for kept, held in splits]
