"""Diabetic-retinopathy lesions in fundus photographs (IDRiD subset with CODRAS boxes), multi-label."""

from __future__ import annotations

from collections.abc import Iterator

from medfm.data.sources import open_source
from medfm.data.sources.fundus import IdridFundusSource
from medfm.errors import DataError
from medfm.evaluate.tasks.base import Example, Task, TaskInfo, register_task
from medfm.log import get_logger

log = get_logger("evaluate.tasks.fundus")

LESIONS = ("hard_exudates", "haemorrhage")

# The photographs are 4288x2848; lesion presence survives this size and loading stays near a second.
IMAGE_SIZE = 512


@register_task("idrid_lesions")
class IdridLesions(Task):
    """Presence of hard exudates and of haemorrhages (which include microaneurysms) in each photograph.

    Labels come from the box classes of the image. The optic disc is not a label: every annotated
    photograph has exactly one optic-disc box, so it has a single outcome. One photograph (``0046``, a
    proliferative case whose disc is hidden by fibrosis) has no box file at all; an image without even
    the optic disc was not annotated rather than lesion-free, so images without any box are left out
    (and logged).

    Inputs: ``{"image": uint8 [3, H, W]}``, the longer side downscaled to 512 px. No patient ids exist in
    this subset, so each photograph is its own subject and two eyes of one person may fall in different
    splits.

    Split: keyed hash with train 0.6 / val 0 / test 0.4 (empty validation split), the source's own split
    rule, which a medfm corpus of ``idrid_fundus`` follows too. The corpus's default fractions would leave
    6 test images; these give 51 training images (23 with hard exudates, 29 with haemorrhages) and 20 test
    images (9 and 10), each label with both outcomes in both splits.
    """

    info = TaskInfo(
        kind="image",
        modality="fundus",
        description="Hard exudates and haemorrhages present in an IDRiD fundus photograph (multi-label)",
        source="idrid_fundus",
        folder="fundus-idrid-subset",
        classes=LESIONS,
        multilabel=True,
        fractions=IdridFundusSource.info.split.fractions,
        citation=(
            "Porwal P, et al. Indian Diabetic Retinopathy Image Dataset (IDRiD). Data 3(3):25, 2018. "
            "Boxes: von Csefalvay C. CODRAS, 2019."
        ),
    )

    def examples(self) -> Iterator[Example]:
        source = open_source(self.info.source, self.root, max_size=IMAGE_SIZE)
        missing = sorted(set(LESIONS) - set(source.class_names))
        if missing:
            raise DataError(
                f"task {self.name}: {self.root / 'retinal.names'} lacks the box class(es) {missing}"
            )
        unannotated = []
        for sample in source:
            meta = sample["meta"]
            if len(sample["boxes"]) == 0:
                unannotated.append(meta["sample_id"])
                continue
            yield Example(
                inputs={"image": sample["image"]},
                label=tuple(name for name in LESIONS if meta["labels"][name]),
                subject=meta["subject_id"],
                sample_id=meta["sample_id"],
            )
        if unannotated:
            log.info(
                "task %s: left out %d image(s) without any box (not annotated): %s",
                self.name,
                len(unannotated),
                ", ".join(unannotated),
            )
