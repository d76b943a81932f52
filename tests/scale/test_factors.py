"""Dataset factors on hand-made tasks: separable classes, compressible pictures, volumes, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfm.evaluate.tasks.base import TaskData, TaskInfo
from medfm.scale.factors import dataset_factors, grey_picture

KEYS = {"image": "image", "vqa": "image", "volume": "volume", "signal": "signal"}


def task_data(kind: str, pictures: list, y: np.ndarray, classes=("a", "b"), multilabel=False, split=None):
    info = TaskInfo(
        kind=kind, modality="xray", description="t", source="s", classes=classes, multilabel=multilabel
    )
    n = len(pictures)
    return TaskData(
        name="toy",
        info=info,
        classes=classes,
        inputs={KEYS[kind]: pictures},
        y=y,
        subjects=np.array([f"s{i}" for i in range(n)], dtype=object),
        sample_ids=np.array([f"x{i}" for i in range(n)], dtype=object),
        split=np.array(split if split is not None else ["train"] * n),
    )


def dark_and_bright(rng, n: int = 40, side: int = 64) -> tuple[list, np.ndarray]:
    """Float pictures: class 0 near 0.1, class 1 near 0.9, light noise."""
    y = np.arange(n) % 2
    pictures = [np.clip(0.1 + 0.8 * label + rng.normal(0, 0.02, (1, side, side)), 0, 1) for label in y]
    return [p.astype(np.float32) for p in pictures], y.astype(np.int64)


def test_separated_classes_have_a_small_davies_bouldin_index():
    rng = np.random.default_rng(0)
    pictures, y = dark_and_bright(rng)
    separated = dataset_factors(task_data("image", pictures, y))
    shuffled = dataset_factors(task_data("image", pictures, rng.permutation(y)))
    assert separated["davies_bouldin"] < 0.1
    assert shuffled["davies_bouldin"] > 10 * separated["davies_bouldin"]
    assert separated["task"] == "toy" and separated["n_classes"] == 2 and separated["n_train"] == 40


def test_constant_pictures_compress_better_than_noise():
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    constant = [np.full((3, 32, 32), 128, np.uint8) for _ in y]
    noise = [rng.integers(0, 256, (3, 32, 32), dtype=np.uint8) for _ in y]
    flat = dataset_factors(task_data("image", constant, y))
    busy = dataset_factors(task_data("image", noise, y))
    assert flat["gzip_ratio"] < 0.1 < 0.5 < busy["gzip_ratio"]


def test_only_a_seeded_sample_of_training_examples_is_used():
    rng = np.random.default_rng(0)
    pictures, y = dark_and_bright(rng, n=50)
    split = ["train"] * 40 + ["test"] * 10
    data = task_data("vqa", [torch.from_numpy(p) for p in pictures], y, split=split)
    first = dataset_factors(data, max_examples=10, seed=3)
    assert first == dataset_factors(data, max_examples=10, seed=3)
    assert first["n_train"] == 40


def test_multilabel_tasks_cluster_by_label_combination():
    rng = np.random.default_rng(0)
    combos = np.array([[0, 0], [1, 0], [1, 1]], dtype=np.float32)
    y = combos[np.arange(30) % 3]
    pictures = [
        np.full((1, 16, 16), 0.2 + 0.3 * row.sum(), np.float32) + rng.normal(0, 0.01, (1, 16, 16))
        for row in y
    ]
    factors = dataset_factors(task_data("image", pictures, y, multilabel=True))
    assert 0 < factors["davies_bouldin"] < 0.1
    one_combo = dataset_factors(task_data("image", pictures, np.ones_like(y), multilabel=True))
    assert np.isnan(one_combo["davies_bouldin"])


def test_volumes_use_their_middle_slice():
    rng = np.random.default_rng(0)
    y = np.arange(10) % 2
    volumes = []
    for label in y:
        volume = rng.random((1, 5, 32, 32), dtype=np.float32)  # noise everywhere ...
        volume[:, 2] = 0.25 + 0.5 * label  # ... except a constant middle slice
        volumes.append(volume)
    factors = dataset_factors(task_data("volume", volumes, y))
    assert factors["gzip_ratio"] < 0.1
    assert factors["davies_bouldin"] == pytest.approx(0.0, abs=1e-9)


def test_grey_picture_scales_and_resizes():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (3, 40, 40), dtype=np.uint8)
    as_uint8 = grey_picture(picture, 32)
    as_float = grey_picture(picture.astype(np.float32) / 255, 32)
    assert as_uint8.shape == (32, 32) and as_uint8.dtype == np.uint8
    assert np.abs(as_uint8.astype(int) - as_float.astype(int)).max() <= 1
    hounsfield = np.linspace(-1000, 1000, 8 * 8, dtype=np.float32).reshape(1, 8, 8)
    upsized = grey_picture(hounsfield, 32)  # out of [0, 1]: min-max scaled
    assert upsized.shape == (32, 32) and upsized.min() == 0 and upsized.max() == 255


def test_signal_tasks_have_no_pictures():
    signals = [np.zeros((12, 100), np.float32) for _ in range(4)]
    with pytest.raises(ValueError, match="signal"):
        dataset_factors(task_data("signal", signals, np.array([0, 1, 0, 1])))
