"""MIMIC-III tables (the 100-patient demo or the full database) as one sample per hospital admission."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.tables import read_csv_table
from medfm.errors import DataError

# MIMIC shifts the date of birth of patients older than 89 so that they appear about 300 years old.
AGE_CAP = 90.0
ADMISSION_TEXT = (
    "admission_type",
    "admission_location",
    "insurance",
    "language",
    "religion",
    "marital_status",
    "ethnicity",
)


@register_source("mimic3_demo")
class MIMIC3Admissions(SourceAdapter):
    """One sample per admission (``HADM_ID``) with the features known when the patient is admitted.

    Yields ``{"features": dict, "meta"}``; ``meta.labels = {"in_hospital_mortality": 0/1}``
    (``HOSPITAL_EXPIRE_FLAG``), ``subject_id`` is ``SUBJECT_ID`` and ``path`` the admissions table.
    ``features`` (None where missing):

    - ``age_years``: age at admission from ``PATIENTS.DOB``, capped at 90 because MIMIC shifts the birth
      date of anyone older than 89 (they appear ~300 years old); ``age_over_89`` marks those ages.
    - ``gender``; ``admission_type``, ``admission_location``, ``insurance``, ``language``, ``religion``,
      ``marital_status``, ``ethnicity``; ``admission_diagnosis`` (the admitting clinician's free text).
    - ``ed_hours``: time in the emergency department before admission.
    - ``first_careunit`` of the first ICU stay (``ICUSTAYS``), known once the patient reaches the ICU.

    Nothing recorded at or after discharge (discharge time and location, death time, length of stay,
    ICD diagnoses coded at discharge) is a default feature: each reveals or correlates with the outcome.
    ``include_discharge_features=True`` adds ``post_icu_stay_count``, ``post_diagnosis_count`` and
    ``post_hospital_los_days``, named ``post_*`` so they are never mistaken for admission-time inputs.

    A missing table raises :class:`DataError` naming it. An admission whose patient is missing from
    ``PATIENTS`` is skipped as ``missing_patient``; one with an unreadable date or mortality flag as
    ``malformed_record``.
    """

    info = SourceInfo(
        kind="table",
        modality="ehr",
        anatomy="whole_body",
        license="ODbL 1.0",
        citation=(
            "Johnson A, Pollard T, Mark R. MIMIC-III Clinical Database Demo (version 1.4). PhysioNet, 2019. "
            "Johnson AEW et al. MIMIC-III, a freely accessible critical care database. "
            "Sci Data 3:160035, 2016."
        ),
        description="ICU electronic health records: admissions, patients and ICU stays.",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        include_discharge_features: bool = False,
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.include_discharge_features = include_discharge_features
        self.files: dict[str, str] = {}  # table name -> file name, for skip records
        self.admissions = self._table(
            "ADMISSIONS",
            ["subject_id", "hadm_id", "admittime", "dischtime", "edregtime", "edouttime", "diagnosis",
             "hospital_expire_flag", *ADMISSION_TEXT],
        )  # fmt: skip
        self.patients = self._table("PATIENTS", ["subject_id", "gender", "dob"]).set_index("subject_id")
        if not self.patients.index.is_unique:
            raise DataError(f"{self.name}: PATIENTS lists a SUBJECT_ID more than once")
        stays = self._table("ICUSTAYS", ["hadm_id", "first_careunit", "intime"])
        self.stays = stays.sort_values("intime").groupby("hadm_id")
        self.diagnosis_counts = (
            self._table("DIAGNOSES_ICD", ["hadm_id"]).groupby("hadm_id").size()
            if include_discharge_features
            else None
        )

    def _table(self, name: str, columns: list[str]) -> pd.DataFrame:
        """Read ``NAME.csv`` (or ``.csv.gz``) with lower-case column names, checking the needed columns."""
        candidates = (self.root / f"{name}.csv", self.root / f"{name}.csv.gz")
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            raise DataError(f"{self.name}: required table {name}.csv is missing from {self.root}")
        table = read_csv_table(
            path,
            what=f"{self.name} table",
            required=columns,
            lower_columns=True,
            allow_empty=True,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
        self.files[name] = path.name
        return table[columns]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.admissions.itertuples(index=False):
            hadm_id, subject_id = str(row.hadm_id), str(row.subject_id)
            if subject_id not in self.patients.index:
                detail = f"HADM_ID {hadm_id}: SUBJECT_ID {subject_id} not in PATIENTS"
                self.skips.add(self.files["ADMISSIONS"], "missing_patient", detail)
                continue
            patient = self.patients.loc[subject_id]
            try:
                features = self._features(row, patient)
                label = int(row.hospital_expire_flag)
                if label not in (0, 1):
                    raise ValueError(f"HOSPITAL_EXPIRE_FLAG is {label}")
            except (ValueError, TypeError) as err:
                self.skips.add(self.files["ADMISSIONS"], "malformed_record", f"HADM_ID {hadm_id}: {err}")
                continue
            yield {
                "features": features,
                "meta": self.meta(
                    sample_id=hadm_id,
                    subject_id=subject_id,
                    labels={"in_hospital_mortality": label},
                    path=self.files["ADMISSIONS"],
                ),
            }

    def _features(self, row: Any, patient: pd.Series) -> dict[str, Any]:
        admitted = _time(row.admittime)
        age = _years(_time(patient["dob"]), admitted)
        stays = self.stays.get_group(row.hadm_id) if row.hadm_id in self.stays.groups else None
        features: dict[str, Any] = {
            "age_years": min(age, AGE_CAP),
            "age_over_89": age > 89,
            "gender": _text(patient["gender"]),
            **{name: _text(getattr(row, name)) for name in ADMISSION_TEXT},
            "admission_diagnosis": _text(row.diagnosis),
            "ed_hours": _hours(row.edregtime, row.edouttime),
            "first_careunit": _text(stays["first_careunit"].iloc[0]) if stays is not None else None,
        }
        if self.diagnosis_counts is not None:
            stay_hours = _hours(row.admittime, row.dischtime)
            features["post_icu_stay_count"] = len(stays) if stays is not None else 0
            features["post_diagnosis_count"] = int(self.diagnosis_counts.get(row.hadm_id, 0))
            features["post_hospital_los_days"] = stay_hours / 24 if stay_hours is not None else None
        return features


def _time(text: str) -> datetime:
    # Python datetimes, not pandas ones: shifted MIMIC dates (years 1800-2200) overflow nanosecond stamps.
    return datetime.fromisoformat(text)


def _years(start: datetime, end: datetime) -> float:
    return (end - start).days / 365.2425


def _hours(start: Any, end: Any) -> float | None:
    if _text(start) is None or _text(end) is None:
        return None
    return (_time(end) - _time(start)).total_seconds() / 3600


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None
