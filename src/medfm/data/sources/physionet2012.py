"""The PhysioNet/CinC Challenge 2012 ICU set (first 48 hours of an ICU stay, in-hospital mortality)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm.data.sources._timeseries import grid_mean, iter_tar_files
from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.tables import read_csv_table
from medfm.errors import ConfigError, DataError

# The challenge's time-varying variables, in a fixed order (the columns of ``series``).
FEATURES = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "DiasABP", "FiO2",
    "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP", "MechVent", "Mg", "NIDiasABP", "NIMAP",
    "NISysABP", "Na", "PaCO2", "PaO2", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI",
    "TroponinT", "Urine", "WBC", "Weight", "pH",
)  # fmt: skip
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}

# General descriptors, recorded once at time 00:00; -1 marks a missing one.
STATIC = ("Age", "Gender", "Height", "ICUType", "Weight")
DESCRIPTORS = frozenset({"RecordID", *STATIC})
ICU_TYPES = {1: "Coronary Care Unit", 2: "Cardiac Surgery Recovery Unit", 3: "Medical ICU", 4: "Surgical ICU"}
OUTCOME_LABELS = {
    "In-hospital_death": "in_hospital_death",
    "SAPS-I": "saps_i",
    "SOFA": "sofa",
    "Length_of_stay": "length_of_stay_days",
    "Survival": "survival_days",
}


@register_source("physionet2012")
class PhysioNet2012(SourceAdapter):
    """One sample per ICU stay: its measurements on a regular grid and its outcomes.

    Yields ``{"series": float32 [T, 37] (mean of the values in each bin, NaN where none), "mask": bool
    [T, 37] (observed), "meta"}`` with ``T = ceil(hours / resolution_h)``; a value stamped exactly at
    ``hours`` joins the last bin, later ones are outside the window. ``meta`` has ``features`` (column
    names), ``resolution_h``, ``static`` (Age, Gender, Height, ICUType, initial Weight; None where missing),
    ``icu_type`` (1-4 or None) and ``icu_type_name``, ``path`` and ``labels`` = ``in_hospital_death``
    (0/1), ``saps_i``, ``sofa``, ``length_of_stay_days``, ``survival_days`` (None where the outcome file
    has -1). Values are kept as recorded (the set has a few implausible ones, e.g. Temp -17.8).

    The initial Weight descriptor goes to ``static`` only; later Weight readings are a series column. When
    a descriptor occurs several times (some records of the copied set-a list Age 2-6 times), the first
    one is used.

    Options: ``archive`` (tar of ``<RecordID>.txt`` files, streamed; default ``set-a.tar.gz``),
    ``outcomes`` (default ``Outcomes-a.txt``), ``hours`` (48) and ``resolution_h`` (1). A record without
    an outcome row is skipped as ``missing_outcome``; a record with any malformed line (wrong field count,
    bad time, non-numeric or non-finite value, unknown parameter) is skipped whole as ``malformed_record``,
    because a partly parsed stay would silently lose measurements.
    """

    info = SourceInfo(
        kind="series",
        modality="icu_timeseries",
        anatomy="whole_body",
        license="ODC-By 1.0",
        citation=(
            "Silva I, Moody G, Scott DJ, Celi LA, Mark RG. Predicting In-Hospital Mortality of ICU Patients: "
            "The PhysioNet/Computing in Cardiology Challenge 2012. Computing in Cardiology 39:245-248, 2012."
        ),
        description="Irregular multivariate ICU time series (first 48 h) with in-hospital mortality.",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        archive: str = "set-a.tar.gz",
        outcomes: str = "Outcomes-a.txt",
        hours: float = 48,
        resolution_h: float = 1,
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        if hours <= 0 or resolution_h * 60 < 1:
            raise ConfigError(
                f"{self.name}: hours must be positive and resolution_h at least one minute, "
                f"got {hours}, {resolution_h}"
            )
        self.archive = self.root / archive
        if not self.archive.is_file():
            raise DataError(f"{self.name}: archive {self.archive} does not exist")
        self.hours = hours
        self.resolution_h = resolution_h
        self.n_bins = math.ceil(hours / resolution_h)
        self.outcomes = _read_outcomes(self.root / outcomes)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for member, content in iter_tar_files(self.archive, ".txt", self.name):
            path = f"{self.archive.name}/{member}"
            record_id = Path(member).stem
            try:
                series, mask, static = self._parse(content)
            except ValueError as err:
                self.skips.add(path, "malformed_record", str(err))
                continue
            labels = self.outcomes.get(record_id)
            if labels is None:
                self.skips.add(path, "missing_outcome", f"RecordID {record_id} not in the outcomes file")
                continue
            icu_type = static["ICUType"]
            yield {
                "series": series,
                "mask": mask,
                "meta": self.meta(
                    sample_id=record_id,
                    # The challenge gives one record per ICU stay and no separate patient identifier.
                    subject_id=record_id,
                    labels=labels,
                    features=list(FEATURES),
                    resolution_h=self.resolution_h,
                    static=static,
                    icu_type=icu_type,
                    icu_type_name=ICU_TYPES.get(icu_type) if icu_type is not None else None,
                    path=path,
                ),
            }

    def _parse(self, content: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Grid one record file; raises ``ValueError`` saying what is malformed."""
        lines = content.decode("utf-8").split()
        if not lines or lines[0] != "Time,Parameter,Value":
            raise ValueError("header is not 'Time,Parameter,Value'")
        rows = [line.split(",") for line in lines[1:]]
        bad = next((i for i, row in enumerate(rows) if len(row) != 3), None)
        if bad is not None:
            raise ValueError(f"row {bad + 1} has not 3 fields: {lines[bad + 1]!r}")
        if not rows:
            raise ValueError("no measurements")
        times, params, raw_values = zip(*rows, strict=True)
        minutes = _minutes(times)
        values = _numbers(raw_values, "value")
        unknown = set(params) - FEATURE_INDEX.keys() - DESCRIPTORS
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}")

        # Descriptors are stamped 00:00; only the first Weight there is one, later Weights are measurements.
        features = np.fromiter((FEATURE_INDEX.get(p, -1) for p in params), dtype=np.int64, count=len(params))
        static: dict[str, Any] = {}
        for name in STATIC:
            first = params.index(name) if name in params else None
            is_descriptor = first is not None and minutes[first] == 0
            static[name] = _descriptor(name, values[first]) if is_descriptor else None
            if name == "Weight" and is_descriptor:
                features[first] = -1
        if ((features == -1) & (minutes != 0)).any():
            raise ValueError("a general descriptor is stamped after 00:00")

        keep = (features >= 0) & (minutes <= self.hours * 60)
        # A value stamped exactly at the end of the window belongs to its last bin.
        bins = np.minimum(minutes[keep] // round(self.resolution_h * 60), self.n_bins - 1)
        series, mask = grid_mean(bins, features[keep], values[keep], self.n_bins, len(FEATURES))
        return series, mask, static


def _minutes(times: tuple[str, ...]) -> np.ndarray:
    """``HH:MM`` stamps (hours may exceed 24) to minutes since ICU admission."""
    hours, colons, minutes = zip(*(time.partition(":") for time in times), strict=True)
    if set(colons) != {":"}:
        raise ValueError(f"time {times[colons.index('')]!r} is not HH:MM")
    whole_hours, extra_minutes = _numbers(hours, "hour"), _numbers(minutes, "minute")
    if (whole_hours < 0).any() or (extra_minutes < 0).any() or (extra_minutes >= 60).any():
        raise ValueError("time out of range")
    return (whole_hours * 60 + extra_minutes).astype(np.int64)


def _numbers(text: tuple[str, ...], what: str) -> np.ndarray:
    try:
        numbers = np.array(text, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"non-numeric {what}: {err}") from None
    if not np.isfinite(numbers).all():
        raise ValueError(f"non-finite {what}: {text[int(np.argmin(np.isfinite(numbers)))]!r}")
    return numbers


def _descriptor(name: str, value: float) -> float | int | None:
    if value == -1:
        return None
    return int(value) if name in ("Gender", "ICUType") else float(value)


def _read_outcomes(path: Path) -> dict[str, dict[str, Any]]:
    """Labels per RecordID from the outcomes file; -1 (not recorded) becomes None."""
    table = read_csv_table(
        path, what="physionet2012 outcomes file", required=["RecordID", *OUTCOME_LABELS], dtype=str
    )
    numbers = table[list(OUTCOME_LABELS)].apply(pd.to_numeric, errors="coerce")
    if numbers.isna().any().any() or not numbers["In-hospital_death"].isin([0, 1]).all():
        raise DataError(f"physionet2012: outcomes file {path} has non-numeric or invalid values")
    outcomes = {}
    for record_id, row in zip(table["RecordID"].str.strip(), numbers.itertuples(index=False), strict=True):
        outcomes[record_id] = {
            label: _outcome(value) for label, value in zip(OUTCOME_LABELS.values(), row, strict=True)
        }
    return outcomes


def _outcome(value: float) -> int | float | None:
    if value == -1:
        return None
    return int(value) if float(value).is_integer() else float(value)
