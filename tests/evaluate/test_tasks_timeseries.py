"""ECG and ICU tasks on the real CinC 2017, PhysioNet 2012 and 2019 files, and sepsis prediction times."""

from __future__ import annotations

import io
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from medfm.data.sources import open_source
from medfm.data.sources.physionet2019 import COLUMNS, FEATURES
from medfm.data.splits import assign_split
from medfm.evaluate.classical import CLASSICAL
from medfm.evaluate.classical import timeseries as classical_timeseries  # noqa: F401  (registers)
from medfm.evaluate.tasks.base import TASKS
from medfm.evaluate.tasks.ecg import CinC2017Rhythm
from medfm.evaluate.tasks.icu import (
    PhysioNet2012Mortality,
    PhysioNet2019Sepsis,
    age_band,
    demographics,
    prediction_times,
)
from medfm.models import timeseries as timeseries_encoders  # noqa: F401  (registers)
from medfm.models.encoders import ENCODERS


def assert_no_subject_leak(data) -> None:
    test = set(data.subjects[data.split == "test"])
    assert test and not test & set(data.subjects[data.split != "test"])


@pytest.mark.parametrize("name", ["cinc2017_rhythm", "physionet2012_mortality", "physionet2019_sepsis"])
def test_registered_with_their_baseline_and_encoder(name):
    info = TASKS.get(name).info
    assert info.classical in CLASSICAL and info.encoder in ENCODERS
    assert info.split == "subject"


def test_cinc2017_records_at_300_hz(dataset):
    root = dataset("ecg-cinc2017-af")
    data = CinC2017Rhythm(root, limit=200).load()
    assert data.classes == ("N", "A", "O", "~")
    reference = dict(line.split(",") for line in (root / "REFERENCE.csv").read_text().split())
    assert [data.classes[i] for i in data.y] == [reference[s] for s in data.sample_ids]
    assert min(data.class_counts().values()) > 0
    assert data.inputs.keys() == {"signal"}
    for signal in data.inputs["signal"]:
        assert signal.dtype == np.float32 and signal.shape[0] == 1
        assert 9 * 300 <= signal.shape[1] <= 61 * 300
    assert data.sample_ids[0] == data.subjects[0] == "A00001"
    assert data.split[0] == assign_split("cinc2017_ecg/A00001", {"train": 0.8, "val": 0.1, "test": 0.1})
    assert_no_subject_leak(data)


def test_physionet2012_stays(dataset):
    data = PhysioNet2012Mortality(dataset("icu-physionet2012"), limit=300).load()
    assert data.classes == ("survived", "died")
    assert data.inputs.keys() == {"series", "mask", "static"}
    for series, mask, static in zip(data.inputs["series"], data.inputs["mask"], data.inputs["static"]):
        assert series.shape == mask.shape == (48, 37) and series.dtype == np.float32 and mask.dtype == bool
        np.testing.assert_array_equal(mask, ~np.isnan(series))
        assert static.shape == (5,) and static.dtype == np.float32
    # The first stays of set A: 132539 (54-year-old woman, survived), 132551 (78-year-old woman, died).
    first = list(data.sample_ids).index("132539")
    np.testing.assert_array_equal(data.inputs["static"][first], [54, 0, np.nan, np.nan, np.nan])
    assert (
        data.y[first] == 0 and data.groups["sex"][first] == "F" and data.groups["age_band"][first] == "40-59"
    )
    died = list(data.sample_ids).index("132551")
    assert data.y[died] == 1 and data.groups["age_band"][died] == "60-79"
    assert set(data.groups["sex"]) <= {"F", "M", "unknown"}
    assert_no_subject_leak(data)


def test_age_bands_and_sex():
    assert [age_band(a) for a in (15, 18, 39.9, 40, 79, 80, 100, 200, None)] == [
        "<18", "18-39", "18-39", "40-59", "60-79", "80+", "80+", "unknown", "unknown",
    ]  # fmt: skip
    assert demographics({"Gender": 1, "Age": 45.0}) == {"sex": "M", "age_band": "40-59"}
    assert demographics({"Gender": None, "Age": None}) == {"sex": "unknown", "age_band": "unknown"}


def test_prediction_times():
    # Clinical onset is 6 h after the first SepsisLabel row; predictions stop at the onset.
    assert prediction_times(36, 26) == [(24, False), (30, True)]  # onset 32
    assert prediction_times(60, None) == [(t, False) for t in (24, 30, 36, 42, 48, 54)]
    assert prediction_times(100, 18) == []  # onset at hour 24: septic before the first prediction
    assert prediction_times(100, 19) == [(24, True)]  # onset 25
    assert prediction_times(100, 24) == [(24, True)]  # onset 30 = t + 6 is inside (t, t + 6]
    assert prediction_times(100, 25) == [(24, False), (30, True)]
    assert prediction_times(24, None) == [] and prediction_times(25, None) == [(24, False)]


def test_sepsis_examples_of_a_hand_checked_patient(dataset):
    root = dataset("icu-sepsis-physionet2019")
    *_, patient = open_source("physionet2019", root, max_records=47)
    # p100047: 36 hourly rows, SepsisLabel from row 26, so clinical onset at hour 32 (within (30, 36]).
    assert patient["meta"]["sample_id"] == "p100047"
    assert len(patient["series"]) == 36 and np.flatnonzero(patient["hourly_label"])[0] == 26
    examples = []
    for example in PhysioNet2019Sepsis(root).examples():
        if example.subject == "p100047":
            examples.append(example)
        elif examples:
            break
    assert [e.sample_id for e in examples] == ["p100047_h24", "p100047_h30"]
    assert [e.label for e in examples] == ["no_sepsis_6h", "sepsis_6h"]
    for example, start in zip(examples, (0, 6)):
        np.testing.assert_array_equal(example.inputs["series"], patient["series"][start : start + 24])
        np.testing.assert_array_equal(example.inputs["mask"], patient["mask"][start : start + 24])
        assert example.groups == {"sex": "M", "age_band": "40-59"}
    # Age 45, male, SICU (Unit2), HospAdmTime -151.79, then ICULOS at the prediction time.
    np.testing.assert_allclose(examples[1].inputs["static"], [45, 1, 0, 1, -151.79, 30], rtol=1e-6)


def test_sepsis_examples_shapes_and_patient_split(dataset):
    task = PhysioNet2019Sepsis(dataset("icu-sepsis-physionet2019"))
    examples = list(islice(task.examples(), 300))
    splits: dict[str, set[str]] = {}
    for example in examples:
        series, mask = example.inputs["series"], example.inputs["mask"]
        assert series.shape == mask.shape == (24, len(FEATURES)) and series.dtype == np.float32
        np.testing.assert_array_equal(mask, ~np.isnan(series))
        assert example.inputs["static"].shape == (6,)
        assert example.sample_id.startswith(example.subject + "_h")
        splits.setdefault(example.subject, set()).add(task.split_of(example))
    assert len(splits) > 50 and all(len(parts) == 1 for parts in splits.values())
    assert len(examples) > len(splits)  # several prediction times per patient


def psv(n_hours: int, onset_hour: int | None, age: str) -> str:
    rows = ["|".join(COLUMNS)]
    for hour in range(n_hours):
        cells = ["NaN"] * len(COLUMNS)
        cells[0] = str(70 + hour % 5)
        label = int(onset_hour is not None and hour >= onset_hour)
        cells[len(FEATURES) :] = [age, "0", "1", "0", "-3", str(hour + 1), str(label)]
        rows.append("|".join(cells))
    return "\n".join(rows) + "\n"


def test_sepsis_load_splits_by_patient(tmp_path: Path):
    # 40 patients of 40 h, every second one septic with clinical onset at hour 28 (positive at t = 24).
    with tarfile.open(tmp_path / "training_setB_partial.tar.gz", "w:gz") as tar:
        for i in range(40):
            data = psv(40, 22 if i % 2 else None, age="30" if i < 20 else "85").encode()
            info = tarfile.TarInfo(f"training_setB/p{i:06d}.psv")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = PhysioNet2019Sepsis(tmp_path).load()
    septic = np.array([int(s[1:]) % 2 == 1 for s in data.subjects])
    # Non-septic patients: t = 24, 30, 36; septic ones only t = 24, labelled positive.
    assert len(data) == 20 * 3 + 20 and data.y.sum() == 20 and (data.y == septic).all()
    assert set(data.groups["age_band"]) == {"18-39", "80+"} and set(data.groups["sex"]) == {"F"}
    assert_no_subject_leak(data)
