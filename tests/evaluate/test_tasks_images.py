"""Image tasks: the generic folder task on a folder built here, and the pneumonia tasks on real data."""

from __future__ import annotations

import numpy as np
import pytest

from medfm.errors import DataError
from medfm.evaluate.tasks import TASKS


def test_folder_task_splits_by_patient(image_folder):
    data = TASKS.get("image_folder")(image_folder, label_column="finding", id_column="patient").load()
    assert len(data) == 120 and data.classes == ("effusion", "normal")
    assert data.inputs["image"][0].shape == (1, 32, 32)
    for patient in set(data.subjects):
        assert len(set(data.split[data.subjects == patient])) == 1  # a patient's images stay together
    assert {"train", "test"} <= set(data.split)


def test_folder_task_without_id_column_treats_each_image_as_a_subject(image_folder):
    data = TASKS.get("image_folder")(image_folder, label_column="finding").load()
    assert len(set(data.subjects)) == len(data)


def test_unknown_label_in_test_split_is_an_error(image_folder):
    data = TASKS.get("image_folder")(image_folder, label_column="finding", id_column="patient").load()
    test_patient = data.subjects[data.split == "test"][0]
    lines = (image_folder / "labels.csv").read_text().splitlines()
    lines = [line.replace(",normal", ",nodule") if f",{test_patient}," in line else line for line in lines]
    (image_folder / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"unknown label 'nodule'.*training split has \['effusion', 'normal'\]"
    ):
        TASKS.get("image_folder")(image_folder, label_column="finding", id_column="patient").load()


def test_split_with_a_single_class_is_an_error(image_folder):
    lines = (image_folder / "labels.csv").read_text().splitlines()
    (image_folder / "labels.csv").write_text("\n".join(lines[0:1] + [x for x in lines[1:] if "normal" in x]))
    with pytest.raises(DataError, match=r"train split holds a single class \{'normal'"):
        TASKS.get("image_folder")(image_folder, label_column="finding", id_column="patient").load()


def test_missing_label_column_is_an_error(image_folder):
    with pytest.raises(DataError, match="diagnosis"):
        TASKS.get("image_folder")(image_folder, label_column="diagnosis").load()


def test_pneumoniamnist_keeps_the_official_splits(dataset):
    data = TASKS.get("pneumoniamnist")(dataset("pneumoniamnist")).load()
    counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 3882, "val": 524, "test": 624}
    assert data.classes == ("normal", "pneumonia")


@pytest.mark.slow
def test_pneumonia_subject_split_has_no_leak_and_drops_copies(dataset):
    data = TASKS.get("pneumonia_xray")(dataset("xray-pediatric-pneumonia-224")).load()
    assert len(data) < 5840  # byte-identical copies dropped
    test = set(data.subjects[data.split == "test"])
    assert test and not test & set(data.subjects[data.split != "test"])
    digests = {hash(np.asarray(image).tobytes()) for image in data.inputs["image"]}
    assert len(digests) == len(data)
