from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from medfm.data.sources.base import check_sample
from medfm.data.sources.npy_slices import NpySlicesSource
from medfm.errors import ConfigError, DataError


def test_msd_slices(dataset):
    source = NpySlicesSource(dataset("msd-2d-slices"))
    samples = list(source)
    assert len(samples) == 11
    assert len(source.skips) == 0
    for sample in samples:
        check_sample(sample)
        json.dumps(sample["meta"])
        image = sample["image"]
        assert image.dtype == np.float32
        assert image.ndim == 3 and image.shape[0] == 1
        assert image.min() >= 0.0 and image.max() <= 1.0
    metas = {s["meta"]["sample_id"]: (s["meta"], s["image"].shape[1:]) for s in samples}
    assert Counter(meta["modality"] for meta, _ in metas.values()) == {"ct": 3, "mr": 8}
    assert {shape for _, shape in metas.values()} == {(512, 512), (320, 320), (240, 240)}
    ct, shape = metas["ct_abdomen_0"]
    assert (ct["anatomy"], shape) == ("abdomen", (512, 512))
    assert "not taken as Hounsfield" in ct["intensity"]
    assert metas["mri_brain_tumour_3"][0]["anatomy"] == "brain"
    assert metas["mri_heart_0"][0]["anatomy"] == "heart"
    assert metas["mri_prostate_1"][1] == (320, 320)


def test_ct_window_applies_to_ct_only(dataset):
    source = NpySlicesSource(dataset("msd-2d-slices"), intensity=[40, 400])
    intensities = {s["meta"]["modality"]: s["meta"]["intensity"] for s in source}
    assert intensities["ct"] == "ct window centre 40 width 400 HU"
    assert intensities["mr"].startswith("percentile")


def test_bad_arrays_are_skipped(tmp_path):
    np.save(tmp_path / "ct_chest_0.npy", np.arange(64, dtype=np.int16).reshape(8, 8))
    np.save(tmp_path / "ct_chest_1.npy", np.full((8, 8), np.nan))
    np.save(tmp_path / "mri_knee_0.npy", np.zeros((2, 8, 8)))
    np.save(tmp_path / "mri_knee_1.npy", np.full((8, 8), "a"))
    (tmp_path / "mri_knee_2.npy").write_bytes(b"not numpy")
    source = NpySlicesSource(tmp_path)
    samples = list(source)
    assert [s["meta"]["sample_id"] for s in samples] == ["ct_chest_0"]
    assert samples[0]["image"].shape == (1, 8, 8)
    assert source.skips.counts() == {
        "non_finite_image": 1,
        "bad_shape": 1,
        "bad_dtype": 1,
        "unreadable_array": 1,
    }


def test_index_file_and_name_rules(tmp_path):
    np.save(tmp_path / "us_liver_a.npy", np.random.default_rng(0).random((4, 6)))
    np.save(tmp_path / "other.npy", np.ones((4, 6)))
    (tmp_path / "files.csv").write_text("file\nus_liver_a.npy\nother.npy\ngone.npy\n")
    rules = {"us_": {"modality": "us", "anatomy": "abdomen"}, "us_liver": {"anatomy": "liver"}}
    source = NpySlicesSource(tmp_path, modality_from_name=rules, modality="photo")
    metas = [s["meta"] for s in source]
    assert [(m["modality"], m["anatomy"]) for m in metas] == [("photo", "liver"), ("photo", "unknown")]
    assert source.skips.counts() == {"missing_file": 1}


def test_empty_folder_and_bad_options(tmp_path):
    with pytest.raises(DataError, match=r"no \.npy files"):
        NpySlicesSource(tmp_path)
    (tmp_path / "files.csv").write_text("name\na.npy\n")
    with pytest.raises(DataError, match=r"files\.csv lacks column"):
        NpySlicesSource(tmp_path)
    np.save(tmp_path / "a.npy", np.ones((2, 2)))
    with pytest.raises(ConfigError, match="unknown_window"):
        NpySlicesSource(tmp_path, index_file="none.csv", intensity="unknown_window")


def test_index_path_outside_the_folder_is_a_data_error(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((4, 4)))
    np.save(tmp_path / "outside.npy", np.ones((4, 4)))
    (folder / "link.npy").symlink_to(tmp_path / "outside.npy")
    for name in ("../outside.npy", str(tmp_path / "outside.npy"), "link.npy"):
        (folder / "files.csv").write_text(f"file\na.npy\n{name}\n")
        problem = "leaves the folder|is absolute"
        with pytest.raises(DataError, match=rf"^files\.csv row 3: path '{re.escape(name)}' ({problem})"):
            NpySlicesSource(folder)
