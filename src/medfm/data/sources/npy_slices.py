"""A folder of 2D ``.npy`` slices (CT, MR, ...) in raw intensities, optionally listed in an index CSV."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medfm.data.intensity import ct_window, ct_window_option, percentile_scale, require_finite
from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.sources.image_folder import read_index_csv
from medfm.data.tables import check_index_paths
from medfm.errors import DataError

# The MSD slice layout: ``ct_abdomen_0.npy``, ``mri_brain_tumour_3.npy``; the word after the modality
# is the anatomy.
MSD_NAME = re.compile(r"^(ct|mri?)_([a-z]+)", re.IGNORECASE)
MODALITY_ALIASES = {"mri": "mr"}


@register_source("npy_slices")
class NpySlicesSource(SourceAdapter):
    """2D ``.npy`` arrays, one sample per file, each its own subject (no patient ids in such folders).

    Yields ``{"image": float32 [1, H, W] in [0, 1], "meta": {..., "path", "intensity"}}`` with
    ``sample_id`` the path without ``.npy``. ``meta["intensity"]`` says how values were scaled.

    Options:
        index_file: a CSV listing the files (used when it exists; otherwise every ``*.npy`` in ``root``).
        file_column: the index column with file names relative to ``root``.
        modality_from_name: ``{file name prefix: {"modality": ..., "anatomy": ...}}``, longest prefix wins.
            Default: the MSD naming ``ct_<anatomy>_N.npy`` / ``mri_<anatomy>_N.npy``.
        modality, anatomy: for files no rule names.
        intensity: ``"percentile"`` (0.5/99.5 percentiles to 0/1, every modality), or a CT window name
            from ``CT_WINDOWS`` or ``[centre, width]`` applied to CT slices, which must then be in
            Hounsfield units; other slices are always percentile-scaled. The default is percentile
            because slice collections often store CT as shifted, unsigned values rather than HU.

    Skips: ``missing_file``, ``unreadable_array``, ``bad_shape`` (not 2D), ``bad_dtype`` (not real
    numbers), ``non_finite_image`` (NaN or infinite values). An index path that is absolute or leads
    outside ``root`` (``..``, a symbolic link) is a :class:`DataError` naming its row.
    """

    info: ClassVar[SourceInfo] = SourceInfo(
        kind="image",
        modality="unknown",
        anatomy="unknown",
        license="CC BY-SA 4.0",
        citation=(
            "Antonelli M, et al. The Medical Segmentation Decathlon. Nature Communications 13:4128, 2022."
        ),
        description="2D slices stored as .npy arrays (e.g. Medical Segmentation Decathlon CT and MR).",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        index_file: str = "files.csv",
        file_column: str = "file",
        modality_from_name: dict[str, dict[str, str]] | None = None,
        modality: str | None = None,
        anatomy: str | None = None,
        intensity: str | list[float] = "percentile",
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.files = self._list_files(self.root / index_file, file_column)
        self.name_rules = sorted((modality_from_name or {}).items(), key=lambda rule: -len(rule[0]))
        self.modality = modality
        self.anatomy = anatomy
        self.ct_window = self._parse_intensity(intensity)

    def _list_files(self, index: Path, file_column: str) -> list[str]:
        if index.is_file():
            table = read_index_csv(index, required=[file_column], text_columns=[file_column])
            check_index_paths(self.root, table, file_column, index.name)
            return [str(name) for name in table[file_column].dropna()]
        files = sorted(path.name for path in self.root.glob("*.npy"))
        if not files:
            raise DataError(f"{self.root} has no .npy files and no index file {index.name}")
        return files

    def _parse_intensity(self, intensity: str | list[float]) -> tuple[float, float] | None:
        """``None`` for percentile scaling, else the CT window (centre, width) in HU."""
        return None if intensity == "percentile" else ct_window_option(intensity, self.name)

    def modality_anatomy(self, file_name: str) -> tuple[str | None, str | None]:
        """Modality and anatomy named by the file name, falling back to the options."""
        for prefix, rule in self.name_rules:
            if file_name.startswith(prefix):
                return rule.get("modality", self.modality), rule.get("anatomy", self.anatomy)
        if not self.name_rules and (found := MSD_NAME.match(file_name)):
            modality = found.group(1).lower()
            return MODALITY_ALIASES.get(modality, modality), found.group(2).lower()
        return self.modality, self.anatomy

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for rel_path in self.files:
            values = self._load(rel_path)
            if values is None:
                continue
            modality, anatomy = self.modality_anatomy(Path(rel_path).name)
            image, intensity = self._scale(values, modality)
            sample_id = Path(rel_path).with_suffix("").as_posix()
            meta = self.meta(
                sample_id=sample_id,
                subject_id=sample_id,
                modality=modality,
                anatomy=anatomy,
                path=rel_path,
                intensity=intensity,
            )
            yield {"image": image[None], "meta": meta}

    def _load(self, rel_path: str) -> np.ndarray | None:
        """The file's 2D array of real numbers, or ``None`` after recording why it is unusable."""
        path = self.root / rel_path
        if not path.is_file():
            self.skips.add(rel_path, "missing_file")
            return None
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            self.skips.add(rel_path, "unreadable_array", str(err))
            return None
        if values.ndim != 2:
            self.skips.add(rel_path, "bad_shape", f"shape {values.shape}, expected a 2D slice")
            return None
        if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
            self.skips.add(rel_path, "bad_dtype", f"dtype {values.dtype}")
            return None
        problem = require_finite(values)
        if problem:
            self.skips.add(rel_path, "non_finite_image", problem)
            return None
        return values

    def _scale(self, values: np.ndarray, modality: str | None) -> tuple[np.ndarray, str]:
        if modality == "ct" and self.ct_window is not None:
            centre, width = self.ct_window
            return ct_window(values, (centre, width)), f"ct window centre {centre:g} width {width:g} HU"
        note = " (values not taken as Hounsfield units)" if modality == "ct" else ""
        # percentile_scale can promote to float64 (its percentiles are float64 scalars); samples are float32.
        return percentile_scale(values), f"percentile 0.5-99.5{note}"
