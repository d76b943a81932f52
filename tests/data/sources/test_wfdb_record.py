"""The generic WFDB adapter on MIT-BIH record 100 and on small records written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import wfdb

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.wfdb_record import WFDBRecords
from medfm.errors import ConfigError, DataError


def test_mitbih_record_100_whole(dataset):
    source = WFDBRecords(dataset("ecg-mitbih-100"))
    samples = list(source)
    assert len(samples) == 1 and len(source.skips) == 0
    sample = samples[0]
    check_sample(sample)
    json.dumps(sample["meta"])
    signal, meta = sample["signal"], sample["meta"]
    assert signal.dtype == np.float32 and signal.shape == (2, 650_000)
    assert meta["lead_names"] == ["MLII", "V5"] and meta["units"] == ["mV", "mV"]
    assert meta["sampling_rate"] == 360 and meta["duration_s"] == pytest.approx(650_000 / 360)
    # First samples of record 100 in physical units (ADC 995 and 1011, baseline 1024, gain 200).
    np.testing.assert_allclose(signal[:, 0], [-0.145, -0.065], atol=1e-6)
    annotations = sample["annotations"]
    assert len(annotations["sample"]) == len(annotations["symbol"]) == 2274
    assert annotations["symbol"][0] == "+" and annotations["aux_note"][0] == "(N"
    # "+" (rhythm change) is an annotation but not a beat.
    assert meta["labels"] == {"beat_counts": {"A": 33, "N": 2239, "V": 1}}


def test_mitbih_windows_keep_annotations_in_their_window(dataset):
    root = dataset("ecg-mitbih-100")
    source = open_source("wfdb", root, window_s=10)
    samples = list(source)
    assert len(samples) == 180  # 650,000 samples = 180 windows of 3,600; the 2,000-sample tail is dropped
    assert all(s["signal"].shape == (2, 3600) for s in samples)
    assert [s["meta"]["start_sample"] for s in samples[:3]] == [0, 3600, 7200]
    assert len({s["meta"]["sample_id"] for s in samples}) == 180
    assert {s["meta"]["subject_id"] for s in samples} == {"100"}
    for sample in samples:
        positions = sample["annotations"]["sample"]
        assert ((positions >= 0) & (positions < 3600)).all()
    all_annotations = wfdb.rdann(str(root / "100"), "atr").sample
    in_windows = int((all_annotations < 180 * 3600).sum())
    assert sum(len(s["annotations"]["sample"]) for s in samples) == in_windows
    # Windows read separately match the whole record.
    whole = next(iter(WFDBRecords(root)))["signal"]
    np.testing.assert_array_equal(samples[5]["signal"], whole[:, 5 * 3600 : 6 * 3600])


def write_record(folder: Path, name: str, *, n: int = 1000, annotate: bool = True) -> None:
    t = np.arange(n) / 250.0
    signal = np.stack([np.sin(2 * np.pi * t), 0.5 * np.cos(2 * np.pi * t)], axis=1)
    wfdb.wrsamp(name, fs=250, units=["mV", "mV"], sig_name=["I", "II"], p_signal=signal, fmt=["16", "16"],
                write_dir=str(folder))  # fmt: skip
    if annotate:
        wfdb.wrann(name, "atr", np.array([100, 350, 600, 850]), np.array(["N", "V", "N", "~"]),
                   write_dir=str(folder))  # fmt: skip


def test_small_records_whole_and_windowed(tmp_path):
    write_record(tmp_path, "r1")
    write_record(tmp_path, "r2", n=500)
    samples = list(WFDBRecords(tmp_path))
    assert [s["meta"]["sample_id"] for s in samples] == ["r1", "r2"]
    assert samples[0]["signal"].shape == (2, 1000)
    assert samples[0]["meta"]["labels"] == {"beat_counts": {"N": 2, "V": 1}}  # "~" (noise) is no beat
    windows = list(WFDBRecords(tmp_path, records=["r1"], window_s=1.2))  # 300 samples: 3 windows
    assert [w["meta"]["start_sample"] for w in windows] == [0, 300, 600]
    assert windows[1]["annotations"]["sample"].tolist() == [50]
    assert windows[1]["annotations"]["symbol"].tolist() == ["V"]


def test_annotation_none_reads_signals_only(tmp_path):
    write_record(tmp_path, "r1", annotate=False)
    sample = next(iter(WFDBRecords(tmp_path, annotation=None)))
    assert "annotations" not in sample and sample["meta"]["labels"] == {}


def test_bad_records_are_skipped_with_reasons(tmp_path):
    write_record(tmp_path, "good")
    write_record(tmp_path, "no_atr", annotate=False)
    write_record(tmp_path, "truncated")
    data = tmp_path / "truncated.dat"
    data.write_bytes(data.read_bytes()[:1001])
    (tmp_path / "garbage.hea").write_text("this is not a header\n")
    source = WFDBRecords(tmp_path)
    samples = list(source)
    assert [s["meta"]["sample_id"] for s in samples] == ["good"]
    assert source.skips.counts() == {"missing_file": 1, "unreadable_record": 2}
    assert {r.path for r in source.skips.records} == {"no_atr.atr", "truncated.hea", "garbage.hea"}


def test_listed_record_without_header_is_skipped(tmp_path):
    write_record(tmp_path, "r1")
    source = WFDBRecords(tmp_path, records=["r1", "absent"])
    assert len(list(source)) == 1
    assert source.skips.counts() == {"missing_file": 1}


def test_folder_without_records_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="no WFDB header"):
        WFDBRecords(tmp_path)
    write_record(tmp_path, "r1")
    with pytest.raises(ConfigError, match="window_s"):
        WFDBRecords(tmp_path, window_s=0)
    with pytest.raises(ConfigError, match="no option"):
        open_source("wfdb", tmp_path, window=10)
