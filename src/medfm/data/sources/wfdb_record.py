"""Records in the PhysioNet WFDB format (``.hea`` header + signal files, optional annotation file)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import wfdb

from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.errors import ConfigError, DataError

# What wfdb raises for a damaged header, signal or annotation file; callers turn these into skips.
WFDB_ERRORS = (OSError, ValueError, IndexError, EOFError)

# PhysioNet beat annotation codes; the other symbols mark rhythm changes, noise, comments, ...
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")


def read_signal(record: Path, sampfrom: int = 0, sampto: int | None = None) -> tuple[np.ndarray, wfdb.Record]:
    """Read ``record`` (a path without extension) as float32 ``[leads, T]`` in physical units.

    Returns the signal and the wfdb record, whose ``fs``, ``sig_name`` and ``units`` describe it.
    Raises one of ``WFDB_ERRORS`` for a missing or damaged file.
    """
    rec = wfdb.rdrecord(str(record), sampfrom=sampfrom, sampto=sampto, physical=True)
    if rec.p_signal is None:
        raise ValueError("record has no signal")
    return np.ascontiguousarray(rec.p_signal.T, dtype=np.float32), rec


def signal_meta(signal: np.ndarray, rec: wfdb.Record) -> dict[str, Any]:
    """The signal description every WFDB-based sample carries in its ``meta``."""
    return {
        "sampling_rate": float(rec.fs),
        "lead_names": [str(name) for name in rec.sig_name],
        "units": [str(unit) for unit in rec.units],
        "duration_s": signal.shape[1] / float(rec.fs),
    }


@register_source("wfdb")
class WFDBRecords(SourceAdapter):
    """Every WFDB record of one folder (e.g. MIT-BIH), whole or cut into windows.

    Yields ``{"signal": float32 [leads, T] in physical units (NaN where the record marks a sample
    invalid), "annotations": {"sample": int64 [N], "symbol": str [N], "aux_note": str [N]}, "meta"}``.
    Annotation sample indices are relative to the start of the sample's window. ``meta`` has
    ``sampling_rate``, ``lead_names``, ``units``, ``duration_s``, ``record``, ``start_sample``, ``path``
    (the header) and ``labels = {"beat_counts": {symbol: count}}`` over the beat annotations in the window.

    Options: ``records`` (record names; default every ``.hea`` in the folder), ``annotation`` (annotation
    file extension, default ``"atr"``; ``None`` reads signals only, and then ``annotations`` is absent),
    ``window_s`` (cut each record into consecutive windows of this many seconds, one sample each, the
    incomplete last window dropped; default: the whole record is one sample), ``modality`` and ``anatomy``
    (default ECG of the heart). The license defaults to PhysioNet's ODC-By 1.0; pass ``license`` for
    records published under other terms.
    A record whose signal or requested annotation file cannot be read is skipped (``missing_file``,
    ``unreadable_record``, ``unreadable_annotation``).
    """

    info = SourceInfo(
        kind="signal",
        modality="ecg",
        anatomy="heart",
        license="ODC-By 1.0",
        citation="Goldberger AL et al. PhysioBank, PhysioToolkit, and PhysioNet. Circulation 101(23), 2000.",
        description="WFDB records (PhysioNet format), e.g. the MIT-BIH Arrhythmia Database.",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        records: list[str] | None = None,
        annotation: str | None = "atr",
        window_s: float | None = None,
        modality: str = "ecg",
        anatomy: str = "heart",
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        if window_s is not None and window_s <= 0:
            raise ConfigError(f"{self.name}: window_s must be positive, got {window_s}")
        if records is None:
            records = sorted(path.stem for path in self.root.glob("*.hea"))
        self.records = list(records)
        if not self.records:
            raise DataError(f"{self.name}: no WFDB header (.hea) in {self.root}")
        self.annotation = annotation
        self.window_s = window_s
        self.modality = modality
        self.anatomy = anatomy

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for name in self.records:
            yield from self._record_samples(name)

    def _record_samples(self, name: str) -> Iterator[dict[str, Any]]:
        header_path = f"{name}.hea"
        record = self.root / name
        if not (self.root / header_path).is_file():
            self.skips.add(header_path, "missing_file", "no header")
            return
        try:
            header = wfdb.rdheader(str(record))
        except WFDB_ERRORS as err:
            self.skips.add(header_path, "unreadable_record", str(err))
            return
        annotations = None
        if self.annotation is not None:
            try:
                annotations = _read_annotations(record, self.annotation)
            except WFDB_ERRORS as err:
                reason = "missing_file" if isinstance(err, FileNotFoundError) else "unreadable_annotation"
                self.skips.add(f"{name}.{self.annotation}", reason, str(err))
                return
        for start, stop in self._windows(header):
            try:
                signal, rec = read_signal(record, start, stop)
            except WFDB_ERRORS as err:
                # A damaged signal file fails every later window too: one skip for the record.
                reason = "missing_file" if isinstance(err, FileNotFoundError) else "unreadable_record"
                self.skips.add(header_path, reason, f"from sample {start}: {err}")
                return
            yield self._sample(name, header_path, start, signal, rec, annotations)

    def _windows(self, header: wfdb.Record) -> list[tuple[int, int | None]]:
        # A header may omit the signal length; such a record is read whole.
        if self.window_s is None or not header.sig_len:
            return [(0, None)]
        size = round(self.window_s * header.fs)
        return [(start, start + size) for start in range(0, header.sig_len - size + 1, size)]

    def _sample(
        self,
        name: str,
        header_path: str,
        start: int,
        signal: np.ndarray,
        rec: wfdb.Record,
        annotations: dict[str, np.ndarray] | None,
    ) -> dict[str, Any]:
        sample_id = name if self.window_s is None else f"{name}_{start}"
        sample: dict[str, Any] = {"signal": signal}
        labels: dict[str, Any] = {}
        if annotations is not None:
            window = _slice_annotations(annotations, start, start + signal.shape[1])
            sample["annotations"] = window
            beats = Counter(str(s) for s in window["symbol"] if s in BEAT_SYMBOLS)
            labels["beat_counts"] = dict(sorted(beats.items()))
        sample["meta"] = self.meta(
            sample_id=sample_id,
            # WFDB headers carry no patient identifier: one record is one subject (true for MIT-BIH).
            subject_id=name,
            modality=self.modality,
            anatomy=self.anatomy,
            labels=labels,
            record=name,
            start_sample=start,
            path=header_path,
            **signal_meta(signal, rec),
        )
        return sample


def _read_annotations(record: Path, extension: str) -> dict[str, np.ndarray]:
    ann = wfdb.rdann(str(record), extension)
    order = np.argsort(ann.sample, kind="stable")  # windows are cut with a binary search
    return {
        "sample": np.asarray(ann.sample, dtype=np.int64)[order],
        "symbol": np.asarray(ann.symbol, dtype=str)[order],
        # wfdb keeps the NUL padding of the aux field ("(N\x00").
        "aux_note": np.asarray([note.rstrip("\x00") for note in ann.aux_note], dtype=str)[order],
    }


def _slice_annotations(annotations: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """The annotations falling in ``[start, stop)``, with sample indices made relative to ``start``."""
    lo, hi = np.searchsorted(annotations["sample"], [start, stop])
    window = {key: values[lo:hi] for key, values in annotations.items()}
    window["sample"] = window["sample"] - start
    return window
