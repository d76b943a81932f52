"""The IU X-ray report adapter on the Open-i tables and on small tables written here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.iu_xray import IUXrayReports
from medfm.errors import DataError


def test_iu_xray_reports(dataset):
    source = IUXrayReports(dataset("text-iu-xray-reports"))
    samples = list(source)
    # 3,851 reports, of which 25 have neither findings nor impression.
    assert len(samples) == 3851 - 25 and source.skips.counts() == {"empty_report": 25}
    assert len({s["meta"]["sample_id"] for s in samples}) == len(samples)
    for sample in samples:
        check_sample(sample)
        assert sample["text"].startswith(("FINDINGS: ", "IMPRESSION: "))
        assert sample["meta"]["labels"]["mesh"] and sample["meta"]["labels"]["problems"]
    views = Counter(p["projection"] for s in samples for p in s["meta"]["projections"])
    assert set(views) == {"Frontal", "Lateral"}
    assert sum(views.values()) == 7426  # 7,466 rows minus the 40 images of the empty reports
    second = samples[1]
    json.dumps(second["meta"])
    assert second["meta"]["sample_id"] == "2"
    assert second["text"].endswith("\nIMPRESSION: No acute pulmonary findings.")
    assert second["meta"]["labels"] == {
        "mesh": ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"],
        "problems": ["Cardiomegaly", "Pulmonary Artery"],
    }
    assert [p["projection"] for p in second["meta"]["projections"]] == ["Frontal", "Lateral"]
    assert second["meta"]["indication"] == "Preop bariatric surgery."


def write_tables(root: Path) -> None:
    (root / "indiana_reports.csv").write_text(
        "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        "1,normal,normal,Chest,,None.,Clear lungs.,Normal chest.\n"
        "2,Opacity/lung;Effusion,Opacity;Effusion,Chest,Cough.,,,Small effusion.\n"
        "3,normal,normal,Chest,,,  ,\n"
    )
    (root / "indiana_projections.csv").write_text(
        "uid,filename,projection\n1,1_a.png,Frontal\n1,1_b.png,Lateral\n2,2_a.png,Frontal\n"
    )


def test_small_tables(tmp_path):
    write_tables(tmp_path)
    source = open_source("iu_xray_reports", tmp_path)
    samples = list(source)
    assert [s["text"] for s in samples] == [
        "FINDINGS: Clear lungs.\nIMPRESSION: Normal chest.",
        "IMPRESSION: Small effusion.",
    ]
    assert samples[1]["meta"]["labels"] == {
        "mesh": ["Opacity/lung", "Effusion"],
        "problems": ["Opacity", "Effusion"],
    }
    assert samples[1]["meta"]["indication"] == "Cough." and samples[1]["meta"]["comparison"] is None
    assert samples[1]["meta"]["projections"] == [{"file": "2_a.png", "projection": "Frontal"}]
    assert source.skips.counts() == {"empty_report": 1}


def test_unusable_tables(tmp_path):
    write_tables(tmp_path)
    (tmp_path / "indiana_projections.csv").unlink()
    with pytest.raises(DataError, match=r"indiana_projections\.csv"):
        IUXrayReports(tmp_path)
    write_tables(tmp_path)
    (tmp_path / "indiana_reports.csv").write_text("uid,findings\n1,Clear.\n")
    with pytest.raises(DataError, match="lacks column"):
        IUXrayReports(tmp_path)
    (tmp_path / "indiana_reports.csv").write_text("")
    with pytest.raises(DataError, match=r"indiana_reports\.csv is empty"):
        IUXrayReports(tmp_path)
