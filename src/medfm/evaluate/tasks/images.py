"""2D image classification tasks: paediatric pneumonia X-rays, PneumoniaMNIST, and any folder of images.

The pneumonia X-ray set has two tasks. ``pneumonia_xray`` splits by patient (the ``personNNN`` prefix of
170 PNEUMONIA patients occurs in both official splits, so the official split leaks patients);
``pneumonia_xray_official`` keeps the dataset's own train/test split for comparison with the literature.
Both drop the byte-identical copies the set contains.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from medfm.data.sources import open_source
from medfm.data.sources.image_folder import folder_source
from medfm.evaluate.tasks.base import CORPUS_FRACTIONS, Example, Task, TaskInfo, register_task

KERMANY = (
    "Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by "
    "Image-Based Deep Learning. Cell 172(5):1122-1131, 2018."
)


class SourceImageTask(Task):
    """A task over a registered image source whose samples carry one label under ``label_key``.

    A sample without that label is skipped (logged with the source's other skips), not guessed.
    """

    adapter: str = ""  # default: info.source
    label_key: str = "label"
    source_options: ClassVar[dict[str, Any]] = {}

    def examples(self) -> Iterator[Example]:
        source = open_source(self.adapter or self.info.source, self.root, **self.source_options)
        for sample in source:
            meta = sample["meta"]
            label = meta["labels"].get(self.label_key)
            if label is None:
                source.skips.add(
                    meta.get("path", meta["sample_id"]), "missing_label", f"no {self.label_key!r}"
                )
                continue
            yield Example(
                inputs={"image": sample["image"]},
                label=str(label),
                subject=meta["subject_id"],
                sample_id=meta["sample_id"],
                official_split=meta.get("official_split"),
            )


PNEUMONIA = TaskInfo(
    kind="image",
    modality="xray",
    description="Paediatric chest X-ray, NORMAL vs PNEUMONIA (224 px), split by patient.",
    source="pediatric_pneumonia_xray",
    folder="xray-pediatric-pneumonia-224",
    classes=("NORMAL", "PNEUMONIA"),
    classical="hog_logreg",
    dedupe=True,
    citation=KERMANY,
)


@register_task("pneumonia_xray")
class PneumoniaXray(SourceImageTask):
    info = PNEUMONIA
    label_key = "diagnosis"


@register_task("pneumonia_xray_official")
class PneumoniaXrayOfficial(PneumoniaXray):
    info = replace(
        PNEUMONIA,
        split="official",
        description="Paediatric chest X-ray, NORMAL vs PNEUMONIA (224 px), the dataset's own split "
        "(which puts 170 patients in both train and test).",
    )


@register_task("pneumoniamnist")
class PneumoniaMNIST(SourceImageTask):
    info = TaskInfo(
        kind="image",
        modality="xray",
        description="PneumoniaMNIST (MedMNIST v2), normal vs pneumonia at 28 px, official splits.",
        source="pneumoniamnist",
        folder="pneumoniamnist",
        classes=("normal", "pneumonia"),
        split="official",
        classical="pixels_logreg",
        citation="Yang J, Shi R, Wei D, et al. MedMNIST v2. Scientific Data 10:41, 2023.",
    )


@register_task("image_folder")
class ImageFolderTask(SourceImageTask):
    """Any folder of images with a ``labels.csv`` (``path`` and a label column): no code needed.

    Options: ``label_column`` (default ``label``); ``id_column``, a patient (or eye, lesion...) column so
    that a subject's images stay in one split (without it each image is its own subject); ``path_column``;
    ``split="official"`` to use the CSV's ``split`` column instead of the subject split; ``fractions`` of
    the subject split (default train 0.8 / val 0.1 / test 0.1, as the corpus builder); ``modality``.
    The classes are the labels of the training split; a validation or test label outside them is an error.
    """

    info = TaskInfo(
        kind="image",
        modality="unknown",
        description="Images listed in labels.csv, one label column.",
        source="image_folder",
        classical="pixels_logreg",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        label_column: str = "label",
        id_column: str | None = None,
        path_column: str = "path",
        split: str = "subject",
        fractions: dict[str, float] | None = None,
        modality: str = "unknown",
        limit: int | None = None,
    ):
        super().__init__(root, limit=limit)
        self.adapter = "image_folder"
        self.label_key = label_column
        self.source_options = {
            "label_columns": [label_column],
            "subject_column": id_column,
            "path_column": path_column,
            "modality": modality,
        }
        self.info = replace(
            self.info,
            modality=modality,
            split=split,
            fractions=tuple((fractions or CORPUS_FRACTIONS).items()),
            source=folder_source(self.root),
            description=f"Images of {self.root.name}/labels.csv labelled by {label_column!r}"
            + (f", split by {id_column!r}" if id_column else ""),
        )
