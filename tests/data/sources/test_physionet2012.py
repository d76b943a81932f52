"""The PhysioNet 2012 adapter on set A and on small archives written here."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.physionet2012 import FEATURES, PhysioNet2012
from medfm.errors import ConfigError, DataError


def test_first_records_of_set_a(dataset):
    samples = list(islice(PhysioNet2012(dataset("icu-physionet2012")), 20))
    first = samples[0]
    check_sample(first)
    json.dumps(first["meta"])
    meta = first["meta"]
    assert meta["sample_id"] == "132539" and meta["path"] == "set-a.tar.gz/set-a/132539.txt"
    assert meta["features"] == list(FEATURES) and len(FEATURES) == 37
    assert meta["labels"] == {
        "in_hospital_death": 0,
        "saps_i": 6,
        "sofa": 1,
        "length_of_stay_days": 5,
        "survival_days": None,
    }
    assert meta["static"] == {"Age": 54.0, "Gender": 0, "Height": None, "ICUType": None, "Weight": None}
    series, mask = first["series"], first["mask"]
    assert series.dtype == np.float32 and series.shape == (48, 37) and mask.dtype == bool
    np.testing.assert_array_equal(mask, ~np.isnan(series))
    # Hour 0 of 132539: HR 73 (00:07) and 77 (00:37); Urine 900 and 60; GCS 15 once.
    hour0 = dict(zip(FEATURES, series[0], strict=True))
    assert hour0["HR"] == 75 and hour0["Urine"] == 480 and hour0["GCS"] == 15
    assert np.isnan(hour0["pH"])


@pytest.mark.slow
def test_full_set_a(dataset):
    source = PhysioNet2012(dataset("icu-physionet2012"))
    deaths = n = 0
    missing_static: Counter[str] = Counter()
    icu_types = set()
    for sample in source:
        n += 1
        deaths += sample["meta"]["labels"]["in_hospital_death"]
        icu_types.add(sample["meta"]["icu_type"])
        missing_static.update(k for k, v in sample["meta"]["static"].items() if v is None)
        assert sample["series"].shape == (48, 37)
    assert n == 3996 and deaths == 554 and len(source.skips) == 0
    # This copy of set A has no ICUType rows at all (the challenge's original files do), so the ICU type
    # is unknown for every record; Height and Weight are -1 (missing) as in the original.
    assert icu_types == {None}
    assert missing_static == {"ICUType": 3996, "Height": 1890, "Weight": 322, "Gender": 3}


def record(record_id: int, *rows: str, icu_type: int = 2) -> str:
    head = [
        "Time,Parameter,Value",
        f"00:00,RecordID,{record_id}",
        "00:00,Age,61",
        "00:00,Gender,1",
        "00:00,Height,-1",
        f"00:00,ICUType,{icu_type}",
        "00:00,Weight,80",
    ]
    return "\n".join([*head, *rows]) + "\n"


def write_set(root: Path, records: dict[int, str], outcomes: list[int]) -> None:
    with tarfile.open(root / "set-a.tar.gz", "w:gz") as tar:
        for record_id, text in records.items():
            data = text.encode()
            info = tarfile.TarInfo(f"set-a/{record_id}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    lines = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    lines += [f"{record_id},12,-1,7,3,1" for record_id in outcomes]
    (root / "Outcomes-a.txt").write_text("\n".join(lines) + "\n")


def test_gridding_descriptors_and_skips(tmp_path):
    good = record(
        1,
        "00:30,HR,80",
        "00:50,HR,100",
        "01:10,Weight,82",
        "47:30,Temp,37",
        "48:00,Temp,39",  # the end of the window: last bin
        "48:01,HR,200",  # outside the window
    )
    records = {
        1: good,
        2: record(2, "00:10,HR,seventy"),
        3: record(3, "00:10,Heartrate,70"),
        4: record(4, "00:10,HR"),
        5: record(5, "00:10,HR,70"),
    }
    write_set(tmp_path, records, outcomes=[1, 2, 3, 4])
    source = open_source("physionet2012", tmp_path)
    samples = list(source)
    assert [s["meta"]["sample_id"] for s in samples] == ["1"]
    meta, series = samples[0]["meta"], samples[0]["series"]
    assert meta["icu_type"] == 2 and meta["icu_type_name"] == "Cardiac Surgery Recovery Unit"
    assert meta["static"] == {"Age": 61.0, "Gender": 1, "Height": None, "ICUType": 2, "Weight": 80.0}
    assert meta["labels"] == {
        "in_hospital_death": 1,
        "saps_i": 12,
        "sofa": None,
        "length_of_stay_days": 7,
        "survival_days": 3,
    }
    column = {name: series[:, i] for i, name in enumerate(FEATURES)}
    assert column["HR"][0] == 90 and np.isnan(column["HR"][1:]).all()
    assert column["Temp"][47] == 38
    # The 00:00 Weight is the static descriptor; the 01:10 one is a measurement.
    assert np.isnan(column["Weight"][0]) and column["Weight"][1] == 82
    assert samples[0]["mask"].sum() == 3
    assert source.skips.counts() == {"malformed_record": 3, "missing_outcome": 1}


def test_coarser_grid(tmp_path):
    write_set(tmp_path, {1: record(1, "05:59,HR,80", "06:00,HR,90", "48:00,HR,70")}, outcomes=[1])
    series = next(iter(PhysioNet2012(tmp_path, resolution_h=6)))["series"]
    hr = series[:, FEATURES.index("HR")]
    assert series.shape == (8, 37) and hr[0] == 80 and hr[1] == 90 and hr[7] == 70


def test_unusable_sources(tmp_path):
    with pytest.raises(DataError, match=r"archive .* does not exist"):
        PhysioNet2012(tmp_path)
    write_set(tmp_path, {1: record(1)}, outcomes=[1])
    (tmp_path / "set-a.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(DataError, match="cannot read archive"):
        list(PhysioNet2012(tmp_path))
    (tmp_path / "Outcomes-a.txt").unlink()
    with pytest.raises(DataError, match=r"outcomes file .* does not exist"):
        PhysioNet2012(tmp_path)
    (tmp_path / "Outcomes-a.txt").write_text("RecordID,SOFA\n1,3\n")
    with pytest.raises(DataError, match="lacks column"):
        PhysioNet2012(tmp_path)
    with pytest.raises(ConfigError):
        PhysioNet2012(tmp_path, resolution_h=0)
