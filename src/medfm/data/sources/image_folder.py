"""A folder of image files indexed by a ``labels.csv``: the way to point medfm at a new 2D dataset.

Also holds :func:`read_image`, the load-or-skip step the other 2D image adapters share, and the
paediatric pneumonia X-ray set, which is such a folder with subjects encoded in its file names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from medfm.data.io import IMAGE_ERRORS, load_image
from medfm.data.sources.base import SkipLog, SourceAdapter, SourceInfo, register_source
from medfm.data.splits import SplitRule
from medfm.data.tables import check_index_paths, json_value, read_csv_table
from medfm.errors import ConfigError


def read_image(
    root: Path, rel_path: str, skips: SkipLog, *, max_size: int | None = None, grayscale: str = "auto"
) -> np.ndarray | None:
    """Decode ``root / rel_path`` with :func:`load_image`, or record why not and return ``None``."""
    path = root / rel_path
    if not path.is_file():
        skips.add(rel_path, "missing_file")
        return None
    try:
        return load_image(path, max_size=max_size, grayscale=grayscale)
    except IMAGE_ERRORS as err:
        skips.add(rel_path, "unreadable_image", str(err))
        return None


def read_index_csv(path: Path, *, required: list[str], text_columns: list[str]) -> pd.DataFrame:
    """Read an index CSV (``text_columns`` kept as strings); :class:`DataError` if unusable."""
    return read_csv_table(path, what="index file", required=required, dtype=dict.fromkeys(text_columns, str))


def folder_source(root: str | Path) -> str:
    """The source name of a user's image folder, ``image_folder:<folder name>``: the corpus and the
    ``image_folder`` task key its subjects the same way, and two folders' subjects never collide."""
    return f"image_folder:{Path(root).expanduser().resolve().name}"


@register_source("image_folder")
class ImageFolderSource(SourceAdapter):
    """Images listed in a CSV index, one sample per row.

    Yields ``{"image": uint8 [C, H, W], "meta": {..., "path", "labels", "official_split"?}}``.
    ``sample_id`` is the image's path relative to ``root``; ``labels`` maps each label column to its value
    (``None`` for an empty cell).

    Options:
        labels_file: the index CSV, relative to ``root``.
        path_column: the column holding image paths relative to ``root``.
        label_columns: columns copied into ``meta["labels"]``; default every column except the path,
            split and subject columns.
        subject_column: a patient (or lesion, eye, ...) id column, so that splits can keep a subject's
            images together.
        subject_pattern: a regular expression searched in the file name; its first group is the subject id.
            Without a subject column or pattern each image is its own subject.
        split_column: the column with the dataset's official split, copied to ``meta["official_split"]``
            when the column exists.
        modality, anatomy: written to every sample's meta (default ``"unknown"``); give ``license`` too.
        max_size, grayscale: passed to :func:`medfm.data.io.load_image`.

    Skips: ``missing_file`` (the row's image does not exist or the row has no path), ``unreadable_image``
    (truncated or not an image), ``missing_subject`` (empty subject cell, or a file name the subject pattern
    does not match). A path that is absolute or leads outside ``root`` (``..``, a symbolic link) is a
    :class:`DataError` naming its row.
    """

    info: ClassVar[SourceInfo] = SourceInfo(
        kind="image", modality="unknown", anatomy="unknown", license="unknown"
    )
    default_label_columns: ClassVar[list[str] | None] = None
    default_subject_pattern: ClassVar[str | None] = None
    named_by_folder: ClassVar[bool] = True  # a user's folder: its source name carries the folder's name

    def __init__(
        self,
        root: str | Path,
        *,
        labels_file: str = "labels.csv",
        path_column: str = "path",
        label_columns: list[str] | None = None,
        subject_column: str | None = None,
        subject_pattern: str | None = None,
        split_column: str = "split",
        modality: str | None = None,
        anatomy: str | None = None,
        max_size: int | None = None,
        grayscale: str = "auto",
        source: str | None = None,
        license: str | None = None,
    ):
        named = source or (folder_source(root) if self.named_by_folder else None)
        super().__init__(root, source=named, license=license)
        self.labels_path = self.root / labels_file
        self.path_column = path_column
        self.subject_column = subject_column
        self.subject_pattern = self._compile(subject_pattern or self.default_subject_pattern)
        self.modality = modality
        self.anatomy = anatomy
        self.max_size = max_size
        self.grayscale = grayscale
        label_columns = label_columns if label_columns is not None else self.default_label_columns
        id_columns = [path_column, *([subject_column] if subject_column else [])]
        self.table = read_index_csv(
            self.labels_path,
            required=[*id_columns, *(label_columns or [])],
            text_columns=[*id_columns, split_column],
        )
        check_index_paths(self.root, self.table, path_column, labels_file)
        self.split_column = split_column if split_column in self.table.columns else None
        not_labels = {path_column, split_column, subject_column}
        self.label_columns = (
            label_columns
            if label_columns is not None
            else [c for c in self.table.columns if c not in not_labels]
        )

    @staticmethod
    def _compile(pattern: str | None) -> re.Pattern[str] | None:
        if pattern is None:
            return None
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ConfigError(
                f"subject_pattern {pattern!r} is not a valid regular expression: {err}"
            ) from None
        if compiled.groups < 1:
            raise ConfigError(f"subject_pattern {pattern!r} needs a group that captures the subject id")
        return compiled

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row_number, row in enumerate(self.table.to_dict("records"), start=2):
            rel_path = json_value(row[self.path_column])
            if not rel_path:
                self.skips.add(f"{self.labels_path.name}:{row_number}", "missing_file", "row has no path")
                continue
            subject = self.subject_of(row, rel_path)
            if subject is None:
                continue
            image = read_image(
                self.root, rel_path, self.skips, max_size=self.max_size, grayscale=self.grayscale
            )
            if image is None:
                continue
            extra = {"official_split": json_value(row[self.split_column])} if self.split_column else {}
            meta = self.meta(
                sample_id=rel_path,
                subject_id=subject,
                modality=self.modality,
                anatomy=self.anatomy,
                labels=self.labels_of(row, rel_path),
                path=rel_path,
                **extra,
            )
            yield {"image": image, "meta": meta}

    def subject_of(self, row: dict[str, Any], rel_path: str) -> str | None:
        """The row's subject id, or ``None`` (after recording a skip) when it cannot be found."""
        if self.subject_column:
            subject = json_value(row[self.subject_column])
            if subject is None or not str(subject).strip():
                self.skips.add(rel_path, "missing_subject", f"empty {self.subject_column!r} cell")
                return None
            return str(subject)
        if self.subject_pattern:
            found = self.subject_pattern.search(Path(rel_path).name)
            if found is None or not found.group(1):
                self.skips.add(
                    rel_path, "missing_subject", f"name does not match {self.subject_pattern.pattern!r}"
                )
                return None
            return found.group(1)
        return rel_path

    def labels_of(self, row: dict[str, Any], rel_path: str) -> dict[str, Any]:
        """The row's labels; subclasses derive extra labels (e.g. from the file name) here."""
        return {column: json_value(row[column]) for column in self.label_columns}


@register_source("pediatric_pneumonia_xray")
class PediatricPneumoniaXraySource(ImageFolderSource):
    """Paediatric chest X-rays (Kermany 2018), NORMAL or PNEUMONIA, with the official train/test split.

    An :class:`ImageFolderSource` over ``labels.csv`` (``path,split,label``). Labels:
    ``{"diagnosis": "NORMAL" | "PNEUMONIA", "subtype": "bacteria" | "virus"}`` (subtype only where the
    file name gives it). The subject is taken from the file name: ``personNNN`` for PNEUMONIA files and the
    ``IM-NNNN`` / ``NORMAL2-IM-NNNN`` part for NORMAL files (``IM-0429-0001.jpeg`` and
    ``IM-0429-0001-0002.jpeg`` are one patient). The same ``personNNN`` occurs in both official splits;
    it is treated as one subject, the cautious reading for leakage-free splits.
    """

    named_by_folder: ClassVar[bool] = False
    info: ClassVar[SourceInfo] = SourceInfo(
        kind="image",
        modality="xray",
        anatomy="chest",
        license="CC BY 4.0",
        citation=(
            "Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by "
            "Image-Based Deep Learning. Cell 172(5):1122-1131, 2018."
        ),
        description="Paediatric chest X-rays (Guangzhou), NORMAL vs PNEUMONIA, resized to 224x224.",
        # one task splits by patient hash, another evaluates on the official test split: hold out both
        split=SplitRule(official_test=True),
    )
    default_label_columns: ClassVar[list[str] | None] = ["label"]
    default_subject_pattern: ClassVar[str | None] = r"^((?:NORMAL\d*-)?IM-\d+|person\d+)"
    subtype_pattern: ClassVar[re.Pattern[str]] = re.compile(r"_(bacteria|virus)_")

    def labels_of(self, row: dict[str, Any], rel_path: str) -> dict[str, Any]:
        labels: dict[str, Any] = {"diagnosis": json_value(row.get("label"))}
        subtype = self.subtype_pattern.search(Path(rel_path).name)
        if subtype:
            labels["subtype"] = subtype.group(1)
        return labels
