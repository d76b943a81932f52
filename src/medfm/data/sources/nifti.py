"""NIfTI volumes (``.nii`` / ``.nii.gz``) with optional voxel label maps, reoriented to RAS.

Layout: ``<root>/<images_dir>/<id>.nii.gz`` and, when labelled, ``<root>/<labels_dir>/<id>.nii.gz`` with the
same file name (the Medical Segmentation Decathlon layout).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medfm.data.intensity import ct_window, ct_window_option, percentile_scale, require_finite
from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.errors import DataError

# What nibabel raises for a damaged, truncated or non-NIfTI file; each becomes an "unreadable_nifti" skip.
NIFTI_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# After reorientation to RAS+, array axes are (x: left->right, y: posterior->anterior, z: inferior->superior);
# reversing them gives [D, H, W] = [superior-inferior, anterior-posterior, left-right], and each axis is
# named after the plane that indexing it gives.
AXIS_NAMES = ["axial", "coronal", "sagittal"]


def nifti_stem(path: Path) -> str:
    """``hippocampus_001.nii.gz`` -> ``hippocampus_001``."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_canonical(path: Path) -> tuple[np.ndarray, list[float]]:
    """Read ``path`` reoriented to the closest canonical (RAS+) orientation.

    Returns the data as float32 ``[D, H, W]`` or ``[C, D, H, W]`` (a 4D file's last axis becomes C) and the
    voxel spacing in mm in D, H, W order. Raises one of ``NIFTI_ERRORS`` for a file nibabel cannot decode.
    """
    image = nib.as_closest_canonical(nib.load(path))
    data = image.get_fdata(dtype=np.float32)  # decode now: a truncated file raises here
    if data.ndim not in (3, 4):
        raise ValueError(f"expected a 3D or 4D volume, got shape {data.shape}")
    zooms = image.header.get_zooms()[:3]
    spacing = [float(z) for z in reversed(zooms)]
    order = (2, 1, 0) if data.ndim == 3 else (3, 2, 1, 0)
    return np.ascontiguousarray(data.transpose(order)), spacing


@register_source("nifti")
class NiftiSource(SourceAdapter):
    """NIfTI volumes, optionally with integer label maps of the same grid.

    Yields one sample per image file::

        {"image": float32 [C, D, H, W] in [0, 1] (C = 1 for a 3D file, the 4th axis of a 4D file),
         "label_map": uint8 [D, H, W] aligned with the image (only when a label file exists),
         "meta": {..., "spacing": [mm along D, H, W], "axis_names": ["axial", "coronal", "sagittal"],
                  "shape": [D, H, W], "intensity": how intensities were mapped, "path": image path,
                  "label_path": label path or absent,
                  "labels": {"<name>_voxels": int, "<name>_mm3": float, ... for each structure and for all
                             non-zero labels together under ``foreground_name``} or {} without labels}}

    Volumes are reoriented to the closest canonical orientation (RAS+) so D runs inferior to superior,
    H posterior to anterior and W left to right. ``subject_id`` is the file name without its suffix.

    Options:
        images_dir: folder of the volumes, relative to the root.
        labels_dir: folder of the label maps (same file names); ``None`` or a missing folder means no labels.
        modality, anatomy: recorded in ``meta`` (defaults: ``mr`` and this source's anatomy).
        intensity: ``"percentile"`` scales the ``percentiles`` of the whole volume (per channel) to 0/1; a CT
            window name from ``medfm.data.intensity.CT_WINDOWS`` or ``[centre, width]`` windows values in HU.
        percentiles: low and high percentile for ``"percentile"`` scaling.
        label_names: label value -> structure name; values without a name are called ``label_<value>``.
        require_labels: skip an image without a label file ("missing_label") rather than yield it unlabelled.

    Skip reasons: ``unreadable_nifti`` (image or label file nibabel cannot decode), ``non_finite_volume``,
    ``label_shape_mismatch``, ``invalid_label_map`` (values that are not integers in 0..255),
    ``missing_label`` (only with ``require_labels``).
    """

    info = SourceInfo(
        kind="volume",
        modality="mr",
        anatomy="unknown",
        license="unspecified",
        description="NIfTI volumes with optional voxel label maps",
    )
    default_label_names: ClassVar[dict[int, str]] = {}
    foreground_name: ClassVar[str] = "foreground"

    def __init__(
        self,
        root: str | Path,
        *,
        images_dir: str = "images",
        labels_dir: str | None = "labels",
        modality: str | None = None,
        anatomy: str | None = None,
        intensity: str | Sequence[float] = "percentile",
        percentiles: Sequence[float] = (0.5, 99.5),
        label_names: Mapping[int | str, str] | None = None,
        require_labels: bool = False,
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.images_dir = self.root / images_dir
        if not self.images_dir.is_dir():
            raise DataError(f"{self.name}: image folder does not exist: {self.images_dir}")
        self.labels_dir = self.root / labels_dir if labels_dir else None
        self.modality = modality
        self.anatomy = anatomy
        self.intensity = intensity if intensity == "percentile" else ct_window_option(intensity, self.name)
        low, high = (float(p) for p in percentiles)
        self.percentiles = (low, high)
        names = self.default_label_names if label_names is None else label_names
        self.label_names = {int(value): str(name) for value, name in names.items()}
        self.require_labels = require_labels

    def image_paths(self) -> list[Path]:
        """The volumes to read: NIfTI files of the image folder, hidden files (``._*``) excluded."""
        paths = sorted(
            p
            for p in self.images_dir.iterdir()
            if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")
        )
        if not paths:
            raise DataError(f"{self.name}: no .nii or .nii.gz files in {self.images_dir}")
        return paths

    def __iter__(self) -> Iterator[dict[str, Any]]:
        labelled = self.labels_dir is not None and self.labels_dir.is_dir()
        for path in self.image_paths():
            rel = path.relative_to(self.root).as_posix()
            try:
                volume, spacing = load_canonical(path)
            except NIFTI_ERRORS as err:
                self.skips.add(rel, "unreadable_nifti", str(err))
                continue
            problem = require_finite(volume)
            if problem:
                self.skips.add(rel, "non_finite_volume", problem)
                continue
            if volume.ndim == 3:
                volume = volume[None]

            label_path = self.labels_dir / path.name if labelled else None
            label_map = None
            if label_path is not None and label_path.is_file():
                label_rel = label_path.relative_to(self.root).as_posix()
                label_map = self.read_label_map(label_path, label_rel, volume.shape[1:])
                if label_map is None:
                    continue
            elif self.require_labels:
                self.skips.add(rel, "missing_label", f"no label file for {path.name}")
                continue

            sample: dict[str, Any] = {"image": self.scale(volume)}
            extra: dict[str, Any] = {}
            labels: dict[str, Any] = {}
            if label_map is not None:
                sample["label_map"] = label_map
                labels = self.structure_volumes(label_map, spacing)
                extra["label_path"] = label_rel
            sample["meta"] = self.meta(
                sample_id=nifti_stem(path),
                subject_id=nifti_stem(path),
                modality=self.modality,
                anatomy=self.anatomy,
                labels=labels,
                path=rel,
                spacing=spacing,
                axis_names=list(AXIS_NAMES),
                shape=list(volume.shape[1:]),
                intensity=self.intensity_meta(),
                **extra,
            )
            yield sample

    def read_label_map(self, path: Path, rel: str, image_shape: tuple[int, ...]) -> np.ndarray | None:
        """The label map as uint8 ``[D, H, W]``, or ``None`` after recording why it cannot be used."""
        try:
            labels, _ = load_canonical(path)
        except NIFTI_ERRORS as err:
            self.skips.add(rel, "unreadable_nifti", str(err))
            return None
        if labels.shape != image_shape:
            self.skips.add(rel, "label_shape_mismatch", f"labels {labels.shape} vs image {image_shape}")
            return None
        rounded = np.rint(labels)
        integral = np.isfinite(labels).all() and (rounded == labels).all()
        if not integral or labels.min() < 0 or labels.max() > 255:
            self.skips.add(rel, "invalid_label_map", "values must be integers in 0..255")
            return None
        return rounded.astype(np.uint8)

    def scale(self, volume: np.ndarray) -> np.ndarray:
        """Map to float32 [0, 1]: per-channel percentiles over the whole volume, or a CT window."""
        if self.intensity == "percentile":
            # percentile_scale can promote to float64 (float64 percentiles); samples are float32.
            scaled = [percentile_scale(channel, *self.percentiles) for channel in volume]
            return np.stack(scaled).astype(np.float32, copy=False)
        return ct_window(volume, self.intensity)

    def intensity_meta(self) -> dict[str, Any]:
        if self.intensity == "percentile":
            return {"method": "percentile", "percentiles": list(self.percentiles)}
        centre, width = self.intensity
        return {"method": "ct_window", "centre": centre, "width": width}

    def structure_volumes(self, label_map: np.ndarray, spacing: list[float]) -> dict[str, Any]:
        """Voxel count and volume in mm^3 of each labelled structure and of all of them together."""
        voxel_mm3 = float(np.prod(spacing))
        counts = np.bincount(label_map.ravel(), minlength=256)
        values = sorted((set(self.label_names) | {int(v) for v in np.flatnonzero(counts)}) - {0})
        labels: dict[str, Any] = {}
        for value in values:
            name = self.label_names.get(value, f"label_{value}")
            labels[f"{name}_voxels"] = int(counts[value])
            labels[f"{name}_mm3"] = round(int(counts[value]) * voxel_mm3, 3)
        foreground = int(counts[1:].sum())
        labels[f"{self.foreground_name}_voxels"] = foreground
        labels[f"{self.foreground_name}_mm3"] = round(foreground * voxel_mm3, 3)
        return labels


@register_source("msd_hippocampus")
class MsdHippocampusSource(NiftiSource):
    """MSD Task04 hippocampus: brain MR crops with labels 1 = anterior, 2 = posterior hippocampus.

    ``meta["labels"]`` holds ``anterior_*``, ``posterior_*`` and their sum ``hippocampus_voxels`` /
    ``hippocampus_mm3``.
    """

    info = SourceInfo(
        kind="volume",
        modality="mr",
        anatomy="brain",
        license="CC BY-SA 4.0",
        citation=(
            "Antonelli M, et al. The Medical Segmentation Decathlon. Nature Communications 13:4128, 2022."
        ),
        description="Medical Segmentation Decathlon Task04: hippocampus MR crops, anterior/posterior labels",
    )
    default_label_names: ClassVar[dict[int, str]] = {1: "anterior", 2: "posterior"}
    foreground_name: ClassVar[str] = "hippocampus"
