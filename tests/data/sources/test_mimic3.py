"""The MIMIC-III admissions adapter on the demo tables and on small tables written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.mimic3 import MIMIC3Admissions
from medfm.errors import DataError

# Words of the fields recorded at or after discharge: none may appear among the default features.
OUTCOME_WORDS = ("disch", "death", "expire", "dod", "los", "diagnoses", "icd")


def test_demo_admissions(dataset):
    source = MIMIC3Admissions(dataset("ehr-mimic-iii-demo"))
    samples = list(source)
    assert len(samples) == 129 and len(source.skips) == 0
    assert sum(s["meta"]["labels"]["in_hospital_mortality"] for s in samples) == 40
    assert len({s["meta"]["subject_id"] for s in samples}) == 100
    assert len({s["meta"]["sample_id"] for s in samples}) == 129
    for sample in samples:
        check_sample(sample)
        json.dumps(sample["meta"])
        json.dumps(sample["features"])
        keys = " ".join(sample["features"]).lower()
        assert not any(word in keys for word in OUTCOME_WORDS), keys
        assert 0 < sample["features"]["age_years"] <= 90
    # Nine admissions are of patients whose shifted birth date makes them ~300 years old.
    assert sum(s["features"]["age_over_89"] for s in samples) == 9
    assert all(s["features"]["age_years"] == 90 for s in samples if s["features"]["age_over_89"])
    first = samples[0]["features"]
    assert samples[0]["meta"]["sample_id"] == "142345" and samples[0]["meta"]["subject_id"] == "10006"
    assert first["age_years"] == pytest.approx(70.6, abs=0.05)  # born 2094-03-05, admitted 2164-10-23
    assert first["gender"] == "F" and first["first_careunit"] == "MICU"
    assert first["admission_diagnosis"] == "SEPSIS" and first["language"] is None
    assert first["ed_hours"] == pytest.approx(6 + 17 / 60)  # 16:43 to 23:00


def test_discharge_features_are_opt_in_and_marked(dataset):
    samples = list(open_source("mimic3_demo", dataset("ehr-mimic-iii-demo"), include_discharge_features=True))
    features = samples[0]["features"]
    assert features["post_icu_stay_count"] == 1 and features["post_diagnosis_count"] == 21
    assert features["post_hospital_los_days"] == pytest.approx(8.8375)
    assert sum(s["features"]["post_icu_stay_count"] for s in samples) == 136  # ICUSTAYS rows


def write_tables(root: Path) -> None:
    (root / "ADMISSIONS.csv").write_text(
        "ROW_ID,SUBJECT_ID,HADM_ID,ADMITTIME,DISCHTIME,DEATHTIME,ADMISSION_TYPE,ADMISSION_LOCATION,"
        "DISCHARGE_LOCATION,INSURANCE,LANGUAGE,RELIGION,MARITAL_STATUS,ETHNICITY,EDREGTIME,EDOUTTIME,"
        "DIAGNOSIS,HOSPITAL_EXPIRE_FLAG\n"
        "1,7,100,2150-01-01 10:00:00,2150-01-03 10:00:00,,EMERGENCY,EMERGENCY ROOM ADMIT,HOME,Medicare,"
        "ENGL,,MARRIED,WHITE,,,FALL,0\n"
        "2,8,200,2150-01-01 10:00:00,2150-01-02 10:00:00,2150-01-02 10:00:00,URGENT,TRANSFER,DEAD/EXPIRED,"
        "Private,,,,WHITE,,,CHEST PAIN,1\n"
        "3,9,300,2150-01-01 10:00:00,2150-01-02 10:00:00,,URGENT,TRANSFER,HOME,Private,,,,WHITE,,,PAIN,0\n"
        "4,7,400,not a date,2150-01-02 10:00:00,,URGENT,TRANSFER,HOME,Private,,,,WHITE,,,PAIN,0\n"
    )
    (root / "PATIENTS.csv").write_text(
        "ROW_ID,SUBJECT_ID,GENDER,DOB,DOD,EXPIRE_FLAG\n"
        "1,7,M,2080-01-01 00:00:00,,0\n"
        "2,8,F,1850-01-01 00:00:00,2150-01-02 00:00:00,1\n"
    )
    (root / "ICUSTAYS.csv").write_text(
        "ROW_ID,SUBJECT_ID,HADM_ID,ICUSTAY_ID,FIRST_CAREUNIT,INTIME\n"
        "1,7,100,11,SICU,2150-01-02 00:00:00\n"
        "2,7,100,12,CCU,2150-01-01 12:00:00\n"
    )


def test_small_tables(tmp_path):
    write_tables(tmp_path)
    source = MIMIC3Admissions(tmp_path)
    samples = {s["meta"]["sample_id"]: s for s in source}
    assert set(samples) == {"100", "200"}
    assert samples["100"]["features"]["age_years"] == pytest.approx(70, abs=0.01)
    assert samples["100"]["features"]["first_careunit"] == "CCU"  # the earlier of the two stays
    assert samples["100"]["features"]["religion"] is None
    assert samples["200"]["features"]["age_years"] == 90 and samples["200"]["features"]["age_over_89"]
    assert samples["200"]["features"]["first_careunit"] is None
    assert samples["200"]["meta"]["labels"] == {"in_hospital_mortality": 1}
    assert source.skips.counts() == {"missing_patient": 1, "malformed_record": 1}


def test_missing_table_or_column(tmp_path):
    write_tables(tmp_path)
    (tmp_path / "PATIENTS.csv").unlink()
    with pytest.raises(DataError, match=r"PATIENTS\.csv"):
        MIMIC3Admissions(tmp_path)
    write_tables(tmp_path)
    with pytest.raises(DataError, match=r"DIAGNOSES_ICD\.csv"):
        MIMIC3Admissions(tmp_path, include_discharge_features=True)
    (tmp_path / "ICUSTAYS.csv").write_text("ROW_ID,HADM_ID\n1,100\n")
    with pytest.raises(DataError, match=r"ICUSTAYS\.csv lacks column\(s\) \['first_careunit', 'intime'\]"):
        MIMIC3Admissions(tmp_path)
