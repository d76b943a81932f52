"""The PhysioNet 2019 sepsis adapter on partial training set B and on small archives written here."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.physionet2019 import COLUMNS, FEATURES, PhysioNet2019
from medfm.errors import ConfigError, DataError

ARCHIVE = "training_setB_partial.tar.gz"


def test_first_patients(dataset):
    source = PhysioNet2019(dataset("icu-sepsis-physionet2019"), max_records=300)
    samples = list(source)
    assert len(samples) == 300 and len(source.skips) == 0
    first = samples[0]
    check_sample(first)
    json.dumps(first["meta"])
    meta = first["meta"]
    assert meta["sample_id"] == meta["subject_id"] == "p100001"
    assert meta["path"] == f"{ARCHIVE}/training_setB/p100001.psv"
    assert meta["features"] == list(FEATURES) and len(FEATURES) == 34
    # p100001's first row: Age 73, male, MICU (Unit1), in hospital 214.64 h before the ICU.
    assert meta["static"] == {"Age": 73.0, "Gender": 1, "Unit1": 1, "Unit2": 0, "HospAdmTime": -214.64}
    assert meta["iculos_start"] == 1
    for sample in samples:
        series, label = sample["series"], sample["hourly_label"]
        assert series.dtype == np.float32 and series.shape[1] == 34 and label.dtype == np.int8
        assert label.shape == (series.shape[0],)
        np.testing.assert_array_equal(sample["mask"], ~np.isnan(series))
        labels = sample["meta"]["labels"]
        assert labels["sepsis"] == int(label.any())
        if labels["sepsis"]:
            assert label[labels["onset_hour"]] == 1 and not label[: labels["onset_hour"]].any()
        else:
            assert labels["onset_hour"] is None


@pytest.mark.slow
def test_full_partial_set_b(dataset):
    source = PhysioNet2019(dataset("icu-sepsis-physionet2019"))
    patients = hours = septic = 0
    for sample in source:
        patients += 1
        hours += sample["series"].shape[0]
        septic += sample["meta"]["labels"]["sepsis"]
    assert (patients, hours, septic) == (9271, 351_816, 516)
    assert len(source.skips) == 0


def row(hour: int, label: int = 0, hr: str = "80") -> str:
    cells = ["NaN"] * len(COLUMNS)
    cells[0] = hr
    cells[len(FEATURES) : len(COLUMNS)] = ["70", "0", "1", "0", "-2.5", str(hour), str(label)]
    return "|".join(cells)


def write_archive(root: Path, files: dict[str, str]) -> None:
    with tarfile.open(root / ARCHIVE, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"training_setB/{name}.psv")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_small_archive_labels_and_skips(tmp_path):
    header = "|".join(COLUMNS)
    files = {
        "p1": "\n".join([header, row(1), row(2, hr="NaN"), row(3, 1), row(4, 1)]) + "\n",
        "p2": "\n".join([header, row(1), row(2)]) + "\n",
        "p3": "\n".join([header, row(1), row(2, hr="fast")]) + "\n",
        "p4": "\n".join([header, row(1)[:-2]]) + "\n",
        "p5": header + "\n",
        "p6": "\n".join([header.replace("HR", "HeartRate"), row(1)]) + "\n",
        "p7": "\n".join([header, row(1, label=2)]) + "\n",
    }
    write_archive(tmp_path, files)
    source = open_source("physionet2019", tmp_path)
    samples = list(source)
    assert [s["meta"]["sample_id"] for s in samples] == ["p1", "p2"]
    p1, p2 = samples
    assert p1["series"].shape == (4, 34) and p1["hourly_label"].tolist() == [0, 0, 1, 1]
    assert p1["meta"]["labels"] == {"sepsis": 1, "onset_hour": 2}
    assert p1["mask"][:, 0].tolist() == [True, False, True, True]
    assert p1["meta"]["static"] == {"Age": 70.0, "Gender": 0, "Unit1": 1, "Unit2": 0, "HospAdmTime": -2.5}
    assert p2["meta"]["labels"] == {"sepsis": 0, "onset_hour": None}
    assert source.skips.counts() == {"malformed_record": 4, "empty_record": 1}
    assert [s["meta"]["sample_id"] for s in PhysioNet2019(tmp_path, max_records=1)] == ["p1"]


def test_unusable_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        PhysioNet2019(tmp_path)
    (tmp_path / ARCHIVE).write_bytes(b"\x1f\x8b truncated gzip")
    with pytest.raises(DataError, match="cannot read archive"):
        list(PhysioNet2019(tmp_path))
    with pytest.raises(ConfigError):
        PhysioNet2019(tmp_path, max_records=0)
