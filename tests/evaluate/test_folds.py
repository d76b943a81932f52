"""Cross-validation folds: grouped by subject, stratified, every example tested once, fixed by the data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medfm.errors import ConfigError, DataError
from medfm.evaluate.folds import AUTO, AUTO_FOLDS, cross_validation, folds_for, task_split
from medfm.evaluate.tasks import TaskData
from medfm.evaluate.tasks.images import ImageFolderTask


def task_data(subjects: int = 40, per_subject: int = 3, classes: int = 3, name: str = "image_folder"):
    """Each subject has ``per_subject`` examples of one class; class 2 is rare (every fourth subject)."""
    label_of = [0 if s % 4 in (0, 1) else 1 if s % 4 == 2 else 2 for s in range(subjects)]
    subject = np.repeat(np.array([f"s{s:02d}" for s in range(subjects)], dtype=object), per_subject)
    y = np.repeat(np.array(label_of) % classes, per_subject)
    n = len(y)
    return TaskData(
        name=name,
        info=ImageFolderTask.info,
        classes=tuple(f"c{c}" for c in range(classes)),
        inputs={"image": [None] * n},
        y=y,
        subjects=subject,
        sample_ids=np.array([f"x{i}" for i in range(n)], dtype=object),
        split=np.array(["train"] * (n - 10) + ["val"] * 4 + ["test"] * 6),
    )


def test_every_example_is_tested_once_and_no_subject_crosses_parts():
    data = task_data()
    folds = cross_validation(data, 5)
    tested = np.concatenate([fold.test for fold in folds])
    assert sorted(tested) == list(range(len(data)))
    for fold in folds:
        parts = [set(data.subjects[getattr(fold, part)]) for part in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(data)
        assert 0 < len(fold.val) < len(fold.train)
        # stratified: each fold tests the rare class's share, give or take one subject
        assert abs((data.y[fold.test] == 2).mean() - 0.25) <= 3 / len(fold.test)


def test_folds_depend_on_the_data_alone():
    first, second = cross_validation(task_data(), 5), cross_validation(task_data(), 5)
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val) for a, b in zip(first, second))


def test_automatic_choice_cross_validates_small_folders_only():
    small = task_data()
    assert folds_for(small, AUTO, below=2000) == AUTO_FOLDS
    assert folds_for(small, AUTO, below=100) == 0  # 120 examples
    assert folds_for(replace(small, name="pneumonia_xray"), AUTO, below=2000) == 0
    assert folds_for(small, 0, below=2000) == 0 and folds_for(small, 10, below=2000) == 10
    official = replace(small, info=replace(small.info, split="official"))
    assert folds_for(official, AUTO, below=2000) == 0
    with pytest.raises(ConfigError, match="official split"):
        folds_for(official, 5, below=2000)


def test_the_task_split_is_one_fold_and_too_few_subjects_are_refused():
    data = task_data()
    (fold,) = task_split(data)
    assert len(fold.train) == len(data) - 10 and len(fold.val) == 4 and len(fold.test) == 6
    with pytest.raises(DataError, match="3 subjects cannot fill 5"):
        cross_validation(task_data(subjects=3), 5)
