"""Training-subject subsamples: whole subjects, the asked share, refusals, and the limit on every split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medfm.errors import ConfigError
from medfm.evaluate.subsample import TrainSubsample, limit_examples, train_rows
from medfm.evaluate.tasks import TASKS


@pytest.fixture
def task(image_folder):
    return TASKS.get("image_folder")(root=image_folder, label_column="finding", id_column="patient").load()


def test_all_keeps_the_training_split(task):
    train = task.part("train")
    assert train_rows(train, TrainSubsample(), seed=0).tolist() == list(range(len(train)))


def test_a_fraction_keeps_that_share_of_subjects_whole(task):
    train = task.part("train")
    rows = train_rows(train, TrainSubsample(mode="fraction", fraction=0.5), seed=3)
    subjects = Counter(train.subjects[rows])
    everyone = Counter(train.subjects)
    assert len(subjects) == round(0.5 * len(everyone))
    assert all(subjects[s] == everyone[s] for s in subjects)  # a patient's images move together
    assert len(set(rows)) == len(rows)


def test_a_bootstrap_draws_as_many_subjects_with_replacement_and_depends_on_the_seed(task):
    train = task.part("train")
    spec = TrainSubsample(mode="bootstrap")
    rows = train_rows(train, spec, seed=0)
    drawn = Counter(train.subjects[rows])
    per_subject = Counter(train.subjects)
    assert sum(n // per_subject[s] for s, n in drawn.items()) == len(per_subject)  # draws of whole subjects
    assert max(n // per_subject[s] for s, n in drawn.items()) >= 2  # someone drawn twice
    assert not np.array_equal(rows, train_rows(train, spec, seed=1))
    assert np.array_equal(rows, train_rows(train, spec, seed=0))
    assert np.array_equal(
        train_rows(train, TrainSubsample(mode="bootstrap", seed=5), seed=0),
        train_rows(train, TrainSubsample(mode="bootstrap", seed=5), seed=9),
    )


def test_a_subsample_with_a_single_class_is_refused(task):
    with pytest.raises(ConfigError, match="no longer holds every outcome"):
        train_rows(task.part("train"), TrainSubsample(mode="fraction", fraction=0.01), seed=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [(TrainSubsample(mode="jackknife"), "mode"), (TrainSubsample(mode="fraction", fraction=0), "fraction")],
)
def test_bad_settings_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        spec.check()


def test_limit_shrinks_every_split(task):
    small = limit_examples(task, 40, seed=0)
    assert 30 <= len(small) <= 50 and {"train", "val", "test"} == set(small.split)
