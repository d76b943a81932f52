from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.medmnist import MedMnistSource, PneumoniaMnistSource
from medfm.errors import DataError


def test_pneumoniamnist_counts_and_shapes(dataset):
    source = PneumoniaMnistSource(dataset("pneumoniamnist"))
    counts: Counter[str] = Counter()
    labels: Counter[tuple[str, str]] = Counter()
    for sample in source:
        meta = sample["meta"]
        counts[meta["official_split"]] += 1
        labels[meta["official_split"], meta["labels"]["label"]] += 1
        assert sample["image"].shape == (1, 28, 28)
        assert sample["image"].dtype == np.uint8
    assert counts == {"train": 3882, "val": 524, "test": 624}
    # The official test split: 234 normal, 390 pneumonia (as in the Kermany test set).
    assert (labels["test", "normal"], labels["test", "pneumonia"]) == (234, 390)
    check_sample(sample)
    json.dumps(meta)
    assert meta["sample_id"] == "test-00623" == meta["subject_id"]
    assert (meta["modality"], meta["anatomy"], meta["license"]) == ("xray", "chest", "CC BY 4.0")


def test_generic_adapter_with_split_subset(dataset):
    source = open_source("medmnist", dataset("pneumoniamnist"), splits=["val"], label_name="pneumonia")
    samples = list(source)
    assert len(samples) == 524
    assert {s["meta"]["labels"]["pneumonia"] for s in samples} == {0, 1}
    assert samples[12]["meta"]["sample_id"] == "val-00012"


def test_multilabel_rgb_file(tmp_path):
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    images[1, :, :, 2] = 200
    labels = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=np.uint8)
    np.savez(tmp_path / "chest.npz", test_images=images, test_labels=labels)
    samples = list(MedMnistSource(tmp_path, splits=["test"], modality="xray"))
    assert [s["meta"]["labels"]["label"] for s in samples] == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert samples[1]["image"].shape == (3, 8, 8)
    assert samples[1]["image"][2].max() == 200 and samples[1]["image"][:2].max() == 0


def test_missing_keys_is_a_data_error(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "partial.npz", train_images=images, train_labels=np.zeros((2, 1)))
    with pytest.raises(DataError, match=r"partial\.npz lacks key\(s\) \['val_images'"):
        MedMnistSource(tmp_path)


def test_length_mismatch_and_bad_class_names_are_data_errors(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", test_images=images, test_labels=np.zeros((3, 1), dtype=np.uint8))
    with pytest.raises(DataError, match="2 test images but 3 labels"):
        list(MedMnistSource(tmp_path, splits=["test"]))
    np.savez(tmp_path / "a.npz", test_images=images, test_labels=np.array([[0], [2]]))
    with pytest.raises(DataError, match="2 class names"):
        list(MedMnistSource(tmp_path, splits=["test"], class_names=["a", "b"]))


def test_unreadable_or_absent_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"one \.npz"):
        MedMnistSource(tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"broken\.npz is not a readable"):
        MedMnistSource(tmp_path)
