from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.nifti import MsdHippocampusSource, NiftiSource
from medfm.errors import ConfigError, DataError


def test_msd_hippocampus_full_pass(dataset):
    root = dataset("mri3d-msd-hippocampus")
    source = open_source("msd_hippocampus", root)
    start = time.perf_counter()
    samples = list(source)
    elapsed = time.perf_counter() - start
    print(f"msd_hippocampus: {len(samples)} volumes in {elapsed:.2f} s")

    assert len(samples) == 260  # SOURCE.md: 260 paired volumes
    assert len(source.skips) == 0
    assert len({s["meta"]["subject_id"] for s in samples}) == 260
    shapes = np.array([s["image"].shape[1:] for s in samples])
    assert (shapes >= 20).all() and (shapes <= 64).all()  # crops "around 35x50x35"
    assert tuple(np.median(shapes, axis=0)) == (36.0, 50.0, 35.0)  # [D, H, W] = [z, y, x]
    for sample in samples:
        check_sample(sample)
        json.dumps(sample["meta"])
        image, label_map, meta = sample["image"], sample["label_map"], sample["meta"]
        assert image.dtype == np.float32 and image.shape[0] == 1
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert label_map.dtype == np.uint8 and label_map.shape == image.shape[1:]
        assert set(np.unique(label_map)) <= {0, 1, 2}
        assert meta["spacing"] == [1.0, 1.0, 1.0]
        assert meta["axis_names"] == ["axial", "coronal", "sagittal"]
        assert (meta["modality"], meta["anatomy"], meta["license"]) == ("mr", "brain", "CC BY-SA 4.0")
        labels = meta["labels"]
        assert labels["anterior_voxels"] == int((label_map == 1).sum())
        assert labels["posterior_voxels"] == int((label_map == 2).sum())
        assert labels["hippocampus_voxels"] == labels["anterior_voxels"] + labels["posterior_voxels"] > 0
        assert labels["hippocampus_mm3"] == float(labels["hippocampus_voxels"])  # 1 mm isotropic
    volumes = [s["meta"]["labels"]["hippocampus_mm3"] for s in samples]
    assert 2000 < np.median(volumes) < 4500  # one hippocampus is a few cm^3


def test_msd_hippocampus_sample_matches_file(dataset):
    root = dataset("mri3d-msd-hippocampus")
    sample = next(iter(MsdHippocampusSource(root)))
    meta = sample["meta"]
    assert (meta["sample_id"], meta["subject_id"]) == ("hippocampus_001", "hippocampus_001")
    assert meta["path"] == "images/hippocampus_001.nii.gz"
    assert meta["label_path"] == "labels/hippocampus_001.nii.gz"
    # The files are stored RAS (x, y, z) = (35, 51, 35); the sample is [D, H, W] = (z, y, x).
    labels = np.asanyarray(nib.load(root / meta["label_path"]).dataobj)
    assert sample["label_map"].shape == (35, 51, 35)
    np.testing.assert_array_equal(sample["label_map"], labels.transpose(2, 1, 0))


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def _ras_volume(shape=(4, 5, 6)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_reorients_to_ras_and_orders_spacing(tmp_path):
    ras = _ras_volume()
    labels = (ras % 3).astype(np.uint8)
    zooms = np.diag([2.0, 3.0, 4.0, 1.0])
    # Left-right flipped (LAS) and axes stored in z, y, x order: both must come back as RAS.
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0]) @ zooms
    _save(tmp_path / "images/las.nii.gz", ras[::-1].copy(), flip_x)
    _save(tmp_path / "labels/las.nii.gz", labels[::-1].copy(), flip_x)
    swap_xz = np.array([[0, 0, 2.0, 0], [0, 3.0, 0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    _save(tmp_path / "images/zyx.nii.gz", ras.transpose(2, 1, 0).copy(), swap_xz)
    _save(tmp_path / "labels/zyx.nii.gz", labels.transpose(2, 1, 0).copy(), swap_xz)

    source = NiftiSource(tmp_path, intensity=[0, 1000], label_names={"1": "one"})
    samples = {s["meta"]["sample_id"]: s for s in source}
    assert set(samples) == {"las", "zyx"}
    expected_image = ras.transpose(2, 1, 0) / 1000 + 0.5  # window centre 0, width 1000
    for sample in samples.values():
        np.testing.assert_allclose(sample["image"][0], expected_image, rtol=1e-6)
        np.testing.assert_array_equal(sample["label_map"], labels.transpose(2, 1, 0))
        meta = sample["meta"]
        assert meta["spacing"] == [4.0, 3.0, 2.0]
        assert meta["shape"] == [6, 5, 4]
        assert meta["intensity"] == {"method": "ct_window", "centre": 0.0, "width": 1000.0}
        count = int((labels == 1).sum())
        assert meta["labels"]["one_voxels"] == count
        assert meta["labels"]["one_mm3"] == pytest.approx(count * 24.0)
        assert meta["labels"]["label_2_voxels"] == int((labels == 2).sum())
        assert meta["labels"]["foreground_voxels"] == int((labels > 0).sum())


def test_bad_volumes_are_skipped_with_reasons(tmp_path):
    eye = np.eye(4)
    _save(tmp_path / "images/good.nii.gz", _ras_volume(), eye)
    _save(tmp_path / "labels/good.nii.gz", np.ones((4, 5, 6), np.uint8), eye)
    nan = _ras_volume()
    nan[1, 2, 3] = np.nan
    _save(tmp_path / "images/nan.nii.gz", nan, eye)
    _save(tmp_path / "images/mismatch.nii.gz", _ras_volume(), eye)
    _save(tmp_path / "labels/mismatch.nii.gz", np.ones((4, 5, 7), np.uint8), eye)
    _save(tmp_path / "images/fraction.nii.gz", _ras_volume(), eye)
    _save(tmp_path / "labels/fraction.nii.gz", np.full((4, 5, 6), 0.5, np.float32), eye)
    _save(tmp_path / "images/unlabelled.nii.gz", _ras_volume(), eye)
    whole = (tmp_path / "images/good.nii.gz").read_bytes()
    (tmp_path / "images/truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "images/._good.nii.gz").write_bytes(b"resource fork")  # hidden: ignored

    source = NiftiSource(tmp_path, license="test")
    samples = {s["meta"]["sample_id"]: s for s in source}
    assert set(samples) == {"good", "unlabelled"}
    assert source.skips.counts() == {
        "non_finite_volume": 1,
        "label_shape_mismatch": 1,
        "invalid_label_map": 1,
        "unreadable_nifti": 1,
    }
    skipped = {r.path: r.reason for r in source.skips.records}
    assert skipped["images/nan.nii.gz"] == "non_finite_volume"
    assert skipped["images/truncated.nii.gz"] == "unreadable_nifti"
    assert "label_map" not in samples["unlabelled"] and samples["unlabelled"]["meta"]["labels"] == {}
    assert samples["good"]["meta"]["labels"]["foreground_voxels"] == 120

    strict = NiftiSource(tmp_path, license="test", require_labels=True)
    assert {s["meta"]["sample_id"] for s in strict} == {"good"}
    assert strict.skips.counts()["missing_label"] == 1

    unlabelled = list(NiftiSource(tmp_path, license="test", labels_dir=None))
    assert len(unlabelled) == 4 and all("label_map" not in s for s in unlabelled)


def test_percentile_scaling_uses_the_whole_volume(tmp_path):
    volume = _ras_volume((10, 10, 10))
    _save(tmp_path / "images/v.nii", volume, np.eye(4))
    sample = next(iter(NiftiSource(tmp_path, percentiles=[0, 100], license="test")))
    assert sample["image"].dtype == np.float32
    assert sample["image"].min() == 0.0 and sample["image"].max() == 1.0
    np.testing.assert_allclose(sample["image"][0], volume.transpose(2, 1, 0) / 999, atol=1e-6)


def test_bad_options_and_folders(tmp_path):
    with pytest.raises(DataError, match="image folder"):
        NiftiSource(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"no \.nii"):
        list(NiftiSource(tmp_path))
    with pytest.raises(ConfigError, match="unknown CT window"):
        NiftiSource(tmp_path, intensity="soft")
    with pytest.raises(ConfigError, match="centre, width"):
        NiftiSource(tmp_path, intensity=[40, 0])
    with pytest.raises(ConfigError, match="no option"):
        open_source("msd_hippocampus", tmp_path, window="brain")
