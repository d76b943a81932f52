"""Hippocampus volume from brain MR crops (MSD Task04): is the segmented hippocampus small or large?

The label is derived, not annotated: the hippocampus volume in mm³ (voxels labelled anterior or posterior
times the voxel volume) compared with the median volume of the *training split only*, so the threshold
carries no information about the test subjects.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from medfm.data.sources import open_source
from medfm.errors import DataError
from medfm.evaluate.tasks.base import Example, Task, TaskInfo, register_task
from medfm.log import get_logger

log = get_logger("evaluate.tasks.hippocampus")


def hippocampus_mm3(label_map: np.ndarray, spacing: np.ndarray | list[float]) -> float:
    """Volume in mm³ of every labelled voxel (label > 0) of ``label_map`` with voxel ``spacing`` in mm."""
    return float(np.count_nonzero(label_map)) * float(np.prod(spacing))


@register_task("hippocampus_volume")
class HippocampusVolume(Task):
    """Hippocampus volume above ("large") or at most ("small") the training split's median.

    Inputs: ``{"volume": float32 [1, D, H, W] in [0, 1] (percentile-scaled by the adapter, D axial),
    "spacing": float32 [3] (mm along D, H, W)}``. One volume per subject (the file name): MSD publishes
    no patient ids, so the left and right hippocampus of one person may be two subjects. Split: the
    corpus rule (train 0.8 / val 0.1 / test 0.1), so the test subjects are those a medfm corpus of
    ``msd_hippocampus`` holds out: 198 / 31 / 31 volumes, training median 3,334 mm³ (99 small, 99 large).

    The crops are cut around the segmented structure, so their size already says much about the label;
    the ``volume_shape_logreg`` baseline measures how much. ``limit`` still reads every volume, because
    the threshold is the median of the whole training split; after :meth:`load`, ``median_mm3`` holds it.
    """

    info = TaskInfo(
        kind="volume",
        modality="mr",
        description="Hippocampus volume above or below the training median (MSD Task04 MR crops)",
        source="msd_hippocampus",
        folder="mri3d-msd-hippocampus",
        classes=("small", "large"),
        classical="volume_shape_logreg",
        citation=(
            "Antonelli M, et al. The Medical Segmentation Decathlon. Nature Communications 13:4128, 2022."
        ),
    )
    median_mm3: float | None = None

    def examples(self) -> Iterator[Example]:
        unlabelled, volumes = [], []
        source = open_source(self.info.source, self.root, require_labels=True)
        for sample in source:
            meta = sample["meta"]
            spacing = np.asarray(meta["spacing"], dtype=np.float32)
            volumes.append(hippocampus_mm3(sample["label_map"], spacing))
            unlabelled.append(
                Example(
                    inputs={"volume": sample["image"], "spacing": spacing},
                    label="",
                    subject=meta["subject_id"],
                    sample_id=meta["sample_id"],
                )
            )
        train = [v for v, e in zip(volumes, unlabelled) if self.split_of(e) == "train"]
        if not train:
            raise DataError(
                f"task {self.name}: no labelled volume falls in the training split under {self.root}"
            )
        self.median_mm3 = float(np.median(train))
        log.info(
            "task %s: threshold = training median %.1f mm³ (%d training volumes)",
            self.name,
            self.median_mm3,
            len(train),
        )
        for example, volume in zip(unlabelled, volumes):
            example.label = "large" if volume > self.median_mm3 else "small"
            yield example
