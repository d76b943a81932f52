"""Colour fundus photographs with YOLO lesion boxes: the IDRiD subset annotated by CODRAS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.sources.image_folder import read_image
from medfm.data.splits import SplitRule
from medfm.data.tables import check_contained
from medfm.errors import DataError


class AnnotationError(ValueError):
    """A YOLO label file with a line that is not ``class cx cy w h`` within range."""


def parse_yolo(text: str, n_classes: int) -> np.ndarray:
    """YOLO lines ``class cx cy w h`` (normalised) as float32 ``[N, 5]``; raises :class:`AnnotationError`."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise AnnotationError(f"line {number}: not numbers: {line!r}") from None
        if len(values) != 5:
            raise AnnotationError(f"line {number}: {len(values)} fields, expected 5")
        cls, cx, cy, w, h = values
        if not (cls.is_integer() and 0 <= cls < n_classes):
            raise AnnotationError(f"line {number}: class {fields[0]} is not one of 0..{n_classes - 1}")
        if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1):
            raise AnnotationError(f"line {number}: box {values[1:]} is not normalised to [0, 1]")
        rows.append(values)
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


@register_source("idrid_fundus")
class IdridFundusSource(SourceAdapter):
    """IDRiD fundus photographs (``images/NNNN.jpg``) with boxes from ``yolo_labels/NNNN.txt``.

    Yields ``{"image": uint8 [3, H, W], "boxes": float32 [N, 5] (class, cx, cy, w, h normalised to the
    image, so they hold at any size), "meta": {..., "path", "box_classes", "labels"}}``. ``box_classes``
    are the names in ``retinal.names`` (optic_disc, hard_exudates, haemorrhage). ``labels`` has, per class,
    presence (``{"haemorrhage": 0 or 1}``) and count (``{"n_haemorrhage": k}``). An image without a label
    file has zero boxes. Each image is its own subject: the files carry no patient id, and IDRiD may hold
    both eyes of one person.

    Options:
        max_size: longer side after loading (JPEG draft decoding keeps the 4288x2848 originals fast).
        grayscale: passed to :func:`medfm.data.io.load_image`; colour is kept by default.

    Skips: ``bad_annotation`` (a label line that is malformed or out of range: the whole image is skipped,
    because keeping the rest of its boxes would give wrong presence labels), ``unreadable_image``. An image
    or label file that is a symbolic link leading outside ``root`` is a :class:`DataError`.
    """

    info: ClassVar[SourceInfo] = SourceInfo(
        kind="image",
        modality="fundus",
        anatomy="eye",
        license="CC BY 4.0 (images); CC BY-SA 4.0 (boxes)",
        citation=(
            "Porwal P, Pachade S, Kamble R, et al. Indian Diabetic Retinopathy Image Dataset (IDRiD): "
            "A Research Database for Diabetic Retinopathy Screening Research. Data 3(3):25, 2018. "
            "Boxes: von Csefalvay C. CODRAS: The COnsolidated Diabetic Retinopathy Assessment Set, 2019."
        ),
        description="Colour fundus photographs with optic disc, hard exudate and haemorrhage boxes.",
        # the lesion task needs 40 % test photographs to hold both outcomes of each label (see its doc)
        split=SplitRule(fractions=(("train", 0.6), ("val", 0.0), ("test", 0.4))),
    )

    def __init__(
        self,
        root: str | Path,
        *,
        max_size: int | None = 1024,
        grayscale: str = "never",
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.max_size = max_size
        self.grayscale = grayscale
        self.class_names = self._read_names(self.root / "retinal.names")
        self.images = sorted((self.root / "images").glob("*.jpg"))
        if not self.images:
            raise DataError(f"{self.root / 'images'} holds no .jpg images")
        check_contained(self.root, ((self.name, rel) for image in self.images for rel in self._files(image)))

    def _files(self, image: Path) -> tuple[str, str]:
        """The image's path and its label file's, relative to the root."""
        return image.relative_to(self.root).as_posix(), f"yolo_labels/{image.stem}.txt"

    @staticmethod
    def _read_names(path: Path) -> list[str]:
        if not path.is_file():
            raise DataError(f"class names file {path} does not exist")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"class names file {path} is empty")
        return names

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for image_path in self.images:
            rel_path, label_rel = self._files(image_path)
            label_path = self.root / label_rel
            try:
                text = label_path.read_text() if label_path.is_file() else ""
                boxes = parse_yolo(text, len(self.class_names))
            except (AnnotationError, UnicodeDecodeError) as err:
                self.skips.add(label_rel, "bad_annotation", str(err))
                continue
            image = read_image(
                self.root, rel_path, self.skips, max_size=self.max_size, grayscale=self.grayscale
            )
            if image is None:
                continue
            meta = self.meta(
                sample_id=image_path.stem,
                subject_id=image_path.stem,
                labels=self._labels(boxes),
                path=rel_path,
                box_classes=self.class_names,
            )
            yield {"image": image, "boxes": boxes, "meta": meta}

    def _labels(self, boxes: np.ndarray) -> dict[str, int]:
        counts = np.bincount(boxes[:, 0].astype(np.int64), minlength=len(self.class_names))
        presence = {name: int(count > 0) for name, count in zip(self.class_names, counts, strict=True)}
        return presence | {
            f"n_{name}": int(count) for name, count in zip(self.class_names, counts, strict=True)
        }
