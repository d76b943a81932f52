"""MedMNIST 2D ``.npz`` files (keys ``{split}_images`` / ``{split}_labels``), and PneumoniaMNIST."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.splits import SplitRule
from medfm.errors import DataError

# MedMNIST tasks evaluate on the official splits: a corpus keeps them rather than hashing subjects
OFFICIAL_SPLIT = SplitRule(hashed=False, official_test=True)

SPLITS = ("train", "val", "test")


@register_source("medmnist")
class MedMnistSource(SourceAdapter):
    """One MedMNIST 2D dataset; one sample per image, each image its own subject (MedMNIST has no ids).

    Yields ``{"image": uint8 [1 or 3, H, W], "meta": {..., "official_split", "index", "labels"}}`` with
    ``sample_id`` like ``"train-00012"``. ``labels[label_name]`` is the class name (when ``class_names`` is
    given) or the class index; multi-label rows (several label columns) give a list of ints.

    Options:
        file: the ``.npz`` file relative to ``root``; default the only ``.npz`` in ``root``.
        splits: which official splits to read, in order (default train, val, test).
        modality, anatomy: written to every sample's meta.
        label_name: the key of the label in ``meta["labels"]``.
        class_names: names of the class indices of a single-label dataset.

    A missing, unreadable or incomplete file (a split's keys absent, images and labels of different
    lengths, a label beyond ``class_names``) raises :class:`DataError`.
    """

    info: ClassVar[SourceInfo] = SourceInfo(
        kind="image",
        modality="unknown",
        anatomy="unknown",
        license="CC BY 4.0",
        citation=(
            "Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D "
            "biomedical image classification. Scientific Data 10:41, 2023."
        ),
        split=OFFICIAL_SPLIT,
    )
    default_file: ClassVar[str | None] = None
    default_class_names: ClassVar[list[str] | None] = None

    def __init__(
        self,
        root: str | Path,
        *,
        file: str | None = None,
        splits: list[str] | tuple[str, ...] = SPLITS,
        modality: str | None = None,
        anatomy: str | None = None,
        label_name: str = "label",
        class_names: list[str] | None = None,
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.path = self._find_file(file or self.default_file)
        self.splits = list(splits)
        self.modality = modality
        self.anatomy = anatomy
        self.label_name = label_name
        self.class_names = class_names if class_names is not None else self.default_class_names
        with self._open() as arrays:
            keys = set(arrays.files)
        missing = [
            f"{s}_{part}" for s in self.splits for part in ("images", "labels") if f"{s}_{part}" not in keys
        ]
        if missing:
            raise DataError(f"{self.path} lacks key(s) {missing} (has {sorted(keys)})")

    def _find_file(self, file: str | None) -> Path:
        if file is not None:
            path = self.root / file
            if not path.is_file():
                raise DataError(f"MedMNIST file {path} does not exist")
            return path
        found = sorted(self.root.glob("*.npz"))
        if len(found) != 1:
            raise DataError(f"expected one .npz file in {self.root}, found {len(found)}; name it with `file`")
        return found[0]

    def _open(self) -> np.lib.npyio.NpzFile:
        try:
            return np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(f"{self.path} is not a readable .npz file: {err}") from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for split in self.splits:
            with self._open() as arrays:
                images, labels = self._split_arrays(arrays, split)
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                sample_id = f"{split}-{index:05d}"
                meta = self.meta(
                    sample_id=sample_id,
                    subject_id=sample_id,
                    modality=self.modality,
                    anatomy=self.anatomy,
                    labels={self.label_name: self._label(label)},
                    official_split=split,
                    index=index,
                )
                yield {"image": image, "meta": meta}

    def _split_arrays(self, arrays: np.lib.npyio.NpzFile, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A split's images as uint8 [N, C, H, W] and labels as int [N, K], checked for consistency."""
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8:
            raise DataError(f"{self.path}: {split}_images are {images.dtype}, expected uint8")
        if images.ndim == 3:
            images = images[:, None]
        elif images.ndim == 4:
            images = images.transpose(0, 3, 1, 2)
        else:
            raise DataError(f"{self.path}: {split}_images has shape {images.shape}, expected [N, H, W(, C)]")
        labels = labels.reshape(len(labels), -1).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"{self.path}: {len(images)} {split} images but {len(labels)} labels")
        single_label = labels.shape[1] == 1 and labels.size > 0
        if (
            self.class_names is not None
            and single_label
            and not 0 <= labels.min() <= labels.max() < len(self.class_names)
        ):
            raise DataError(
                f"{self.path}: {split} labels range {labels.min()}..{labels.max()} "
                f"but {len(self.class_names)} class names were given"
            )
        return np.ascontiguousarray(images), labels

    def _label(self, row: np.ndarray) -> int | str | list[int]:
        if len(row) > 1:
            return [int(v) for v in row]
        index = int(row[0])
        return self.class_names[index] if self.class_names is not None else index


@register_source("pneumoniamnist")
class PneumoniaMnistSource(MedMnistSource):
    """PneumoniaMNIST: 28x28 paediatric chest X-rays (from Kermany 2018), labels ``normal`` / ``pneumonia``.

    Derived from the same images as ``pediatric_pneumonia_xray``, so the two should not be combined for
    evaluation.
    """

    info: ClassVar[SourceInfo] = SourceInfo(
        kind="image",
        modality="xray",
        anatomy="chest",
        license="CC BY 4.0",
        citation=MedMnistSource.info.citation,
        description="PneumoniaMNIST (MedMNIST v2): 28x28 paediatric chest X-rays, normal vs pneumonia.",
        split=OFFICIAL_SPLIT,
        derived_from="pediatric_pneumonia_xray",  # centre crops of Kermany's X-rays resized to 28 px
    )
    default_file: ClassVar[str | None] = "pneumoniamnist.npz"
    default_class_names: ClassVar[list[str] | None] = ["normal", "pneumonia"]
