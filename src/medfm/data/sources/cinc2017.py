"""The PhysioNet/CinC Challenge 2017 single-lead ECG set (atrial fibrillation classification)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.sources.wfdb_record import WFDB_ERRORS, read_signal, signal_meta
from medfm.data.tables import check_contained
from medfm.errors import DataError

RHYTHM_NAMES = {
    "N": "normal sinus rhythm",
    "A": "atrial fibrillation",
    "O": "other rhythm",
    "~": "too noisy to classify",
}


@register_source("cinc2017_ecg")
class CinC2017ECG(SourceAdapter):
    """AliveCor single-lead ECG records with their rhythm label, as listed in ``REFERENCE.csv``.

    Yields ``{"signal": float32 [1, T] in mV, "meta"}`` with ``sampling_rate`` (300 Hz), ``lead_names``,
    ``units``, ``duration_s``, ``path`` (the record's header) and ``labels = {"rhythm": "N" | "A" | "O" |
    "~", "rhythm_name": ...}``. The challenge distributes no patient identifiers, so each record is its own
    subject; a patient with several recordings may therefore appear under several subject ids.

    Options: ``reference`` (label file, ``record,label`` without header; default ``REFERENCE.csv``) and
    ``records_dir`` (folder of ``.hea``/``.mat`` files relative to the root; default ``records``, use
    ``"."`` for the challenge's own layout). A listed record without its files is skipped as
    ``missing_file``, one wfdb cannot read as ``unreadable_record``; one whose files would lie outside the
    records folder (an absolute name, ``..``, a symbolic link) is a :class:`DataError`.
    """

    info = SourceInfo(
        kind="signal",
        modality="ecg",
        anatomy="heart",
        license="ODC-By 1.0",
        citation=(
            "Clifford GD, Liu C, Moody B, et al. AF Classification from a Short Single Lead ECG Recording: "
            "the PhysioNet/Computing in Cardiology Challenge 2017. Computing in Cardiology 44, 2017."
        ),
        description="Single-lead ECG, 300 Hz, 9-60 s, labelled normal / AF / other rhythm / noisy.",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        reference: str = "REFERENCE.csv",
        records_dir: str = "records",
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.reference = self.root / reference
        self.records_dir = records_dir
        self.labels = _read_reference(self.reference, self.root / records_dir)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for name, rhythm in self.labels:
            stem = f"{self.records_dir}/{name}" if self.records_dir != "." else name
            missing = [path for path in (f"{stem}.hea", f"{stem}.mat") if not (self.root / path).is_file()]
            if missing:
                self.skips.add(missing[0], "missing_file", "listed in " + self.reference.name)
                continue
            try:
                signal, rec = read_signal(self.root / stem)
            except WFDB_ERRORS as err:
                self.skips.add(f"{stem}.hea", "unreadable_record", str(err))
                continue
            yield {
                "signal": signal,
                "meta": self.meta(
                    sample_id=name,
                    subject_id=name,
                    labels={"rhythm": rhythm, "rhythm_name": RHYTHM_NAMES[rhythm]},
                    path=f"{stem}.hea",
                    **signal_meta(signal, rec),
                ),
            }


def _read_reference(path: Path, records: Path) -> list[tuple[str, str]]:
    """``(record, label)`` pairs of the label file; any malformed line, or a record whose files would lie
    outside the ``records`` folder, makes the whole file unusable."""
    if not path.is_file():
        raise DataError(f"cinc2017_ecg: label file {path} does not exist")
    pairs, files = [], []
    with path.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 2 or row[1].strip() not in RHYTHM_NAMES:
                raise DataError(f"cinc2017_ecg: {path} line {line_no} is not 'record,N|A|O|~': {row}")
            record = row[0].strip()
            pairs.append((record, row[1].strip()))
            files += [(f"{path.name} line {line_no}", record + suffix) for suffix in (".hea", ".mat")]
    if not pairs:
        raise DataError(f"cinc2017_ecg: label file {path} is empty")
    check_contained(records, files)
    return pairs
