"""Indiana University chest X-ray reports (Open-i), in the two-table layout of the common Kaggle copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.tables import read_csv_table
from medfm.errors import DataError

REPORT_COLUMNS = ("uid", "MeSH", "Problems", "indication", "comparison", "findings", "impression")
PROJECTION_COLUMNS = ("uid", "filename", "projection")


@register_source("iu_xray_reports")
class IUXrayReports(SourceAdapter):
    """One sample per report (``uid``; one report per study, so the uid is also the subject).

    Yields ``{"text": "FINDINGS: ...\\nIMPRESSION: ...", "meta"}`` (only the sections present) with
    ``labels = {"mesh": [...], "problems": [...]}`` (the ``;``-separated tags; ``["normal"]`` for a normal
    study), ``indication`` and ``comparison`` (str or None), ``projections`` (``[{"file", "projection"}]``,
    Frontal or Lateral; the images themselves are not part of this source) and ``path``. ``XXXX`` in the
    text is the collection's de-identification mask, kept as is.

    Options: ``reports`` (default ``indiana_reports.csv``) and ``projections`` (default
    ``indiana_projections.csv``). A report with neither findings nor impression is skipped as
    ``empty_report``; a missing table or column raises :class:`DataError`.
    """

    info = SourceInfo(
        kind="text",
        modality="report",
        anatomy="chest",
        # The copied tables state no license; Open-i's IU collection is commonly cited as CC BY-NC-ND 4.0.
        license="CC BY-NC-ND 4.0 (as commonly cited for Open-i; not stated by the copy, verify)",
        citation=(
            "Demner-Fushman D, Kohli MD, Rosenman MB, et al. Preparing a collection of radiology "
            "examinations for distribution and retrieval. JAMIA 23(2):304-310, 2016."
        ),
        description="Chest X-ray radiology reports with MeSH and problem tags (no images).",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        reports: str = "indiana_reports.csv",
        projections: str = "indiana_projections.csv",
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.reports_file = reports
        self.reports = _read_table(self.root / reports, REPORT_COLUMNS)
        if not self.reports["uid"].is_unique:
            raise DataError(f"{self.name}: {reports} lists a report uid more than once")
        views = _read_table(self.root / projections, PROJECTION_COLUMNS)
        self.projections: dict[str, list[dict[str, str]]] = {}
        for uid, filename, projection in views.itertuples(index=False):
            self.projections.setdefault(uid, []).append({"file": filename, "projection": projection})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.reports.itertuples(index=False):
            sections = (("FINDINGS", row.findings), ("IMPRESSION", row.impression))
            present = [f"{title}: {text}" for title, text in sections if text]
            if not present:
                detail = f"uid {row.uid}: no findings or impression"
                self.skips.add(self.reports_file, "empty_report", detail)
                continue
            yield {
                "text": "\n".join(present),
                "meta": self.meta(
                    sample_id=row.uid,
                    subject_id=row.uid,
                    labels={"mesh": _tags(row.MeSH), "problems": _tags(row.Problems)},
                    indication=row.indication or None,
                    comparison=row.comparison or None,
                    projections=self.projections.get(row.uid, []),
                    path=self.reports_file,
                ),
            }


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """The named columns as stripped strings ("" where empty); DataError for a missing or malformed file."""
    table = read_csv_table(
        path, what="iu_xray_reports table", required=columns, dtype=str, keep_default_na=False
    )
    return table[list(columns)].apply(lambda column: column.str.strip())


def _tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(";") if tag.strip()]
