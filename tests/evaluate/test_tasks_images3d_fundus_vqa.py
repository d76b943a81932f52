"""Hippocampus volume, IDRiD lesions and VQA-RAD closed questions on the real data, with their baselines."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from medfm.data.sources import open_source
from medfm.data.splits import assign_split
from medfm.evaluate.classical import CLASSICAL, fit_predict
from medfm.evaluate.classical.text import QuestionFeatures
from medfm.evaluate.classical.volumes import shape_features
from medfm.evaluate.tasks.base import CORPUS_FRACTIONS, TASKS
from medfm.evaluate.tasks.fundus import IdridLesions
from medfm.evaluate.tasks.hippocampus import HippocampusVolume, hippocampus_mm3
from medfm.evaluate.tasks.vqa import VqaRadClosed, normalise_text


@pytest.fixture(scope="module")
def hippocampus(dataset):
    task = HippocampusVolume(dataset("mri3d-msd-hippocampus"))
    return task, task.load()


@pytest.fixture(scope="module")
def fundus(dataset):
    return IdridLesions(dataset("fundus-idrid-subset")).load()


@pytest.fixture(scope="module")
def vqa(dataset):
    return VqaRadClosed(dataset("vqa-rad")).load()


def test_registries_list_the_tasks_and_their_baselines():
    assert {"hippocampus_volume", "idrid_lesions", "vqa_rad_closed"} <= set(TASKS.list())
    assert TASKS.get("hippocampus_volume").info.classical == "volume_shape_logreg"
    assert TASKS.get("vqa_rad_closed").info.classical == "question_logreg"
    assert {"volume_shape_logreg", "question_logreg"} <= set(CLASSICAL.list())


def test_hippocampus_volume_matches_a_hand_count_on_the_raw_file(hippocampus, dataset):
    task, data = hippocampus
    raw = nib.load(dataset("mri3d-msd-hippocampus") / "labels" / "hippocampus_001.nii.gz")
    by_hand = float((np.asarray(raw.dataobj) > 0).sum() * np.prod(raw.header.get_zooms()[:3]))
    sample = next(
        s for s in open_source("msd_hippocampus", task.root) if s["meta"]["sample_id"] == "hippocampus_001"
    )
    assert hippocampus_mm3(sample["label_map"], sample["meta"]["spacing"]) == pytest.approx(by_hand)

    row = list(data.sample_ids).index("hippocampus_001")
    assert data.classes[data.y[row]] == ("large" if by_hand > task.median_mm3 else "small")
    volume, spacing = data.inputs["volume"][row], data.inputs["spacing"][row]
    assert volume.dtype == np.float32 and volume.shape == (1, *raw.shape[::-1])
    assert volume.min() >= 0 and volume.max() <= 1
    assert spacing.dtype == np.float32 and spacing.tolist() == [1.0, 1.0, 1.0]


def test_hippocampus_threshold_is_the_median_of_the_training_split_only(hippocampus):
    task, data = hippocampus
    subjects, volumes = [], []
    for path in sorted((task.root / "labels").glob("hippocampus_*.nii.gz")):
        labels = nib.load(path)
        subjects.append(path.name.removesuffix(".nii.gz"))
        volumes.append((np.asarray(labels.dataobj) > 0).sum() * np.prod(labels.header.get_zooms()[:3]))
    splits = np.array([assign_split(f"msd_hippocampus/{s}", CORPUS_FRACTIONS) for s in subjects])
    volumes = np.array(volumes, dtype=float)
    assert list(data.subjects) == subjects
    train_median = float(np.median(volumes[splits == "train"]))

    assert task.median_mm3 == train_median == 3334.0
    assert float(np.median(volumes)) == 3326.5  # the all-data median would differ
    assert (data.split == splits).all()
    assert (data.y == (volumes > train_median)).all()
    assert data.classes == ("small", "large")
    assert data.class_counts("train") == {"small": 99, "large": 99}
    assert data.class_counts("test") == {"small": 15, "large": 16}


def test_subject_split_tasks_keep_test_subjects_out_of_training(hippocampus, fundus):
    for data in (hippocampus[1], fundus):
        test = set(data.subjects[data.split == "test"])
        assert test and not test & set(data.subjects[data.split != "test"])


def test_fundus_labels_are_the_lesions_and_leave_out_the_unannotated_image(fundus, dataset):
    with open(dataset("fundus-idrid-subset") / "boxes.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert sum(int(r["n_optic_disc"]) > 0 for r in rows) == len(rows) - 1  # the disc: no second outcome

    assert fundus.classes == ("hard_exudates", "haemorrhage")
    assert len(fundus) == 71 and "0046" not in set(fundus.sample_ids)
    assert fundus.class_counts() == {
        "hard_exudates": sum(int(r["n_hard_exudates"]) > 0 for r in rows),
        "haemorrhage": sum(int(r["n_haemorrhage"]) > 0 for r in rows),
    }
    assert fundus.class_counts("train") == {"hard_exudates": 23, "haemorrhage": 29}
    assert fundus.class_counts("test") == {"hard_exudates": 9, "haemorrhage": 10}
    assert [int((fundus.split == s).sum()) for s in ("train", "val", "test")] == [51, 0, 20]
    image = fundus.inputs["image"][0]
    assert image.dtype == np.uint8 and image.shape[0] == 3 and max(image.shape[1:]) == 512


def test_vqa_keeps_closed_yes_no_questions_only(vqa, dataset):
    records = json.loads((dataset("vqa-rad") / "trainset.json").read_text())
    closed = [r for r in records if r["answer_type"].strip().upper() == "CLOSED"]
    yes_no = [r for r in closed if normalise_text(r["answer"]) in ("yes", "no")]

    assert vqa.classes == ("no", "yes")
    assert len(closed) - len(yes_no) == 110
    assert int((vqa.split != "test").sum()) == len(yes_no) == 1713
    assert vqa.class_counts("test") == {"no": 133, "yes": 118}
    question = vqa.inputs["question"][0]
    image = vqa.inputs["image"][0]
    assert isinstance(question, str) and image.dtype == np.uint8 and max(image.shape[1:]) <= 256
    # the validation part is carved by image: no image has questions in both train and val
    assert not set(vqa.subjects[vqa.split == "val"]) & set(vqa.subjects[vqa.split == "train"])


def test_unseen_question_flags_test_questions_absent_from_training(vqa):
    unseen = dict(zip(vqa.sample_ids, vqa.flags["unseen_question"]))
    assert not unseen["test-298"]  # "Is the liver normal?" is asked three times in training
    assert unseen["test-13"]  # "Is there airspace consolidation on the left side?" is new
    assert not vqa.flags["unseen_question"][vqa.split != "test"].any()
    assert int(vqa.flags["unseen_question"].sum()) == 194  # of 251 test questions


def test_volume_shape_baseline_gives_test_probabilities(hippocampus):
    data = hippocampus[1]
    baseline = CLASSICAL.get("volume_shape_logreg")
    features = shape_features(data)
    assert features.shape == (len(data), 13) and np.isfinite(features).all()
    first = data.inputs["volume"][0]
    assert features[0, :3].tolist() == list(first.shape[1:])

    prob = fit_predict(baseline, data.part("train"), data.part("test"))
    assert prob.shape == (31, 2) and np.allclose(prob.sum(axis=1), 1)


def test_question_baseline_beats_the_majority_answer(vqa):
    test = vqa.part("test")
    prob = fit_predict(CLASSICAL.get("question_logreg"), vqa.part("train"), test)
    assert prob.shape == (len(test), 2) and np.allclose(prob.sum(axis=1), 1)
    majority = max(test.class_counts().values()) / len(test)
    assert (prob.argmax(axis=1) == test.y).mean() > majority + 0.1


def test_question_features_are_fitted_on_training_questions_only():
    features = QuestionFeatures(max_features=5).fit(["is there a fracture?", "is this a ct scan?", "is it"])
    vocabulary = features.vectorizer.vocabulary_
    assert len(vocabulary) == 5 and "is" in vocabulary  # bounded: the most frequent terms are kept
    matrix = features.transform(["is there a mass?", "where is the lesion", "mass lesion"])
    assert matrix.dtype == np.float32 and matrix.shape == (3, 5)
    assert matrix[1, vocabulary["is"]] == pytest.approx(1.0)  # the only known word of a test question
    assert not matrix[2].any()  # words never seen in training give no features
