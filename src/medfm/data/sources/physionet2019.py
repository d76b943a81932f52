"""The PhysioNet/CinC Challenge 2019 sepsis set (hourly ICU records with an hourly sepsis label)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from medfm.data.sources._timeseries import iter_tar_files
from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.errors import ConfigError, DataError

# Vital signs then laboratory values: the columns of ``series``, in file order.
FEATURES = (
    "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2", "BaseExcess", "HCO3", "FiO2", "pH",
    "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos", "Calcium", "Chloride", "Creatinine", "Bilirubin_direct",
    "Glucose", "Lactate", "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct",
    "Hgb", "PTT", "WBC", "Fibrinogen", "Platelets",
)  # fmt: skip
STATIC = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
WHOLE_NUMBERS = frozenset({"Gender", "Unit1", "Unit2"})  # 0/1 flags
COLUMNS = (*FEATURES, *STATIC, "ICULOS", "SepsisLabel")


@register_source("physionet2019")
class PhysioNet2019(SourceAdapter):
    """One sample per patient: the hourly record and its hourly sepsis label.

    Yields ``{"series": float32 [T, 34] (8 vitals + 26 labs, NaN where not measured), "mask": bool [T, 34],
    "hourly_label": int8 [T] (SepsisLabel), "meta"}``. ``meta`` has ``features``, ``static`` (Age, Gender,
    Unit1, Unit2, HospAdmTime from the first row; None where missing), ``iculos_start`` (ICU length of
    stay in hours at the first row; row ``t`` is ICULOS ``iculos_start + t``), ``path`` and
    ``labels = {"sepsis": 0/1 (ever labelled), "onset_hour": first row with SepsisLabel 1, or None}``.
    The challenge sets SepsisLabel from 6 hours before the clinical onset, so ``onset_hour`` is that
    early-warning time, not the onset itself.

    Options: ``archive`` (tar of ``.psv`` files, streamed; default ``training_setB_partial.tar.gz``) and
    ``max_records`` (stop after this many patients; default all). A file with a different header, a row
    of the wrong length, a non-numeric cell or a SepsisLabel other than 0/1 is skipped as
    ``malformed_record``; an empty one as ``empty_record``.
    """

    info = SourceInfo(
        kind="series",
        modality="icu_timeseries",
        anatomy="whole_body",
        license="CC BY 4.0",
        citation=(
            "Reyna MA, Josef CS, Jeter R, et al. Early Prediction of Sepsis From Clinical Data: The "
            "PhysioNet/Computing in Cardiology Challenge 2019. Critical Care Medicine 48(2):210-217, 2020."
        ),
        description="Hourly ICU vitals and labs with an hourly sepsis label.",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        archive: str = "training_setB_partial.tar.gz",
        max_records: int | None = None,
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        if max_records is not None and max_records < 1:
            raise ConfigError(f"{self.name}: max_records must be at least 1, got {max_records}")
        self.archive = self.root / archive
        if not self.archive.is_file():
            raise DataError(f"{self.name}: archive {self.archive} does not exist")
        self.max_records = max_records

    def __iter__(self) -> Iterator[dict[str, Any]]:
        files = iter_tar_files(self.archive, ".psv", self.name)
        for member, content in islice(files, self.max_records):
            path = f"{self.archive.name}/{member}"
            try:
                table = _parse(content)
            except ValueError as err:
                self.skips.add(path, "malformed_record", str(err))
                continue
            if not len(table):
                self.skips.add(path, "empty_record", "header only")
                continue
            yield self._sample(Path(member).stem, path, table)

    def _sample(self, patient: str, path: str, table: np.ndarray) -> dict[str, Any]:
        series = np.ascontiguousarray(table[:, : len(FEATURES)], dtype=np.float32)
        hourly_label = table[:, -1].astype(np.int8)
        septic = np.flatnonzero(hourly_label == 1)
        onset = int(septic[0]) if septic.size else None
        first = table[0]
        static = {
            name: None if np.isnan(value) else int(value) if name in WHOLE_NUMBERS else float(value)
            for name, value in zip(STATIC, first[len(FEATURES) : len(FEATURES) + len(STATIC)], strict=True)
        }
        return {
            "series": series,
            "mask": ~np.isnan(series),
            "hourly_label": hourly_label,
            "meta": self.meta(
                sample_id=patient,
                subject_id=patient,
                labels={"sepsis": int(septic.size > 0), "onset_hour": onset},
                features=list(FEATURES),
                static=static,
                iculos_start=None if np.isnan(first[-2]) else int(first[-2]),
                path=path,
            ),
        }


def _parse(content: bytes) -> np.ndarray:
    """The ``[T, 41]`` float64 table of one ``.psv`` file; raises ``ValueError`` saying what is wrong."""
    lines = content.decode("utf-8").split()
    if not lines or tuple(lines[0].split("|")) != COLUMNS:
        raise ValueError("header does not list the challenge's 41 columns")
    rows = [line.split("|") for line in lines[1:]]
    bad = next((i for i, row in enumerate(rows) if len(row) != len(COLUMNS)), None)
    if bad is not None:
        raise ValueError(f"row {bad + 1} has {len(rows[bad])} fields, expected {len(COLUMNS)}")
    try:
        table = np.array(rows, dtype=np.float64).reshape(len(rows), len(COLUMNS))
    except ValueError as err:
        raise ValueError(f"non-numeric cell: {err}") from None
    if np.isinf(table).any():
        raise ValueError("infinite value")
    if not np.isin(table[:, -1], (0, 1)).all():
        raise ValueError("SepsisLabel other than 0/1")
    return table
