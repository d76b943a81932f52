"""The CinC 2017 ECG adapter on the 650-record subset and on small records written here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.cinc2017 import CinC2017ECG
from medfm.errors import DataError


def test_cinc2017_subset(dataset):
    source = CinC2017ECG(dataset("ecg-cinc2017-af"))
    samples = list(source)
    assert len(samples) == 650 and len(source.skips) == 0
    assert Counter(s["meta"]["labels"]["rhythm"] for s in samples) == {"N": 200, "A": 200, "O": 150, "~": 100}
    assert len({s["meta"]["sample_id"] for s in samples}) == 650
    for sample in samples:
        meta = sample["meta"]
        assert sample["signal"].dtype == np.float32 and sample["signal"].shape[0] == 1
        assert meta["sampling_rate"] == 300 and meta["units"] == ["mV"]
        assert 9 <= meta["duration_s"] <= 61  # "9-60 s": the longest record is 60.6 s
        assert meta["duration_s"] == pytest.approx(sample["signal"].shape[1] / 300)
    first = samples[0]
    check_sample(first)
    json.dumps(first["meta"])
    assert first["meta"]["sample_id"] == "A00001" and first["meta"]["path"] == "records/A00001.hea"
    assert first["meta"]["labels"] == {"rhythm": "N", "rhythm_name": "normal sinus rhythm"}
    assert first["signal"].shape == (1, 9000)
    # The .mat stores ADC counts at 1000/mV: the first count, -127, is -0.127 mV.
    assert first["signal"][0, 0] == pytest.approx(-0.127)


def write_record(records: Path, name: str, n: int = 3000) -> None:
    counts = (np.sin(np.arange(n) / 20) * 800).astype(np.int16)[None]
    scipy.io.savemat(records / f"{name}.mat", {"val": counts}, format="4")
    (records / f"{name}.hea").write_text(f"{name} 1 300 {n}\n{name}.mat 16+24 1000/mV 16 0 0 0 0 ECG\n")


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    records = tmp_path / "records"
    records.mkdir()
    for name in ("B0001", "B0002", "B0003"):
        write_record(records, name)
    (tmp_path / "REFERENCE.csv").write_text("B0001,N\nB0002,A\nB0003,~\nB0004,O\n")
    return tmp_path


def test_listed_but_missing_and_unreadable_records_are_skipped(small_set):
    (small_set / "records" / "B0002.mat").write_bytes(b"\x00" * 30)  # header says 3,000 samples
    source = open_source("cinc2017_ecg", small_set)
    samples = list(source)
    assert [s["meta"]["sample_id"] for s in samples] == ["B0001", "B0003"]
    assert samples[1]["meta"]["labels"]["rhythm_name"] == "too noisy to classify"
    assert samples[0]["signal"].shape == (1, 3000)
    assert source.skips.counts() == {"unreadable_record": 1, "missing_file": 1}
    assert {r.path for r in source.skips.records} == {"records/B0002.hea", "records/B0004.hea"}


def test_flat_layout(tmp_path):
    write_record(tmp_path, "C0001")
    (tmp_path / "REFERENCE.csv").write_text("C0001,O\n")
    samples = list(CinC2017ECG(tmp_path, records_dir="."))
    assert samples[0]["meta"]["path"] == "C0001.hea"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("", "is empty"), ("B0001,X\n", "line 1"), ("B0001\n", "line 1")],
)
def test_unusable_reference_file(small_set, content, message):
    reference = small_set / "REFERENCE.csv"
    if content is None:
        reference.unlink()
    else:
        reference.write_text(content)
    with pytest.raises(DataError, match=message):
        CinC2017ECG(small_set)


def test_record_outside_the_records_folder_is_a_data_error(small_set):
    write_record(small_set, "B0009")  # beside records/, not in it
    (small_set / "REFERENCE.csv").write_text("B0001,N\n../B0009,A\n")
    with pytest.raises(DataError, match=r"^REFERENCE\.csv line 2: path '\.\./B0009\.hea' leaves the folder"):
        CinC2017ECG(small_set)
    (small_set / "records" / "B0005.hea").symlink_to(small_set / "B0009.hea")
    (small_set / "REFERENCE.csv").write_text("B0005,N\n")
    with pytest.raises(DataError, match=r"line 1: path 'B0005\.hea' leaves the folder"):
        CinC2017ECG(small_set)
