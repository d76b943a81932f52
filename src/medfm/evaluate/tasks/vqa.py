"""VQA-RAD closed questions answered yes or no, with the subset of test questions never asked in training."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from medfm.data.sources import open_source
from medfm.evaluate.tasks.base import Example, Task, TaskInfo, register_task
from medfm.log import get_logger

log = get_logger("evaluate.tasks.vqa")

ANSWERS = ("no", "yes")
IMAGE_SIZE = 256


def normalise_text(text: object) -> str:
    """Lower case, outer blanks stripped, inner runs of white space as one space."""
    return " ".join(str(text).lower().split())


@register_task("vqa_rad_closed")
class VqaRadClosed(Task):
    """Yes/no answers to the closed-ended VQA-RAD questions, on the official train/test split.

    Nearly all closed answers are yes or no; the others (``"flair"``, ``"left"``, ``"pa"``, ...) are left
    out, and logged: 110 of 1,823 closed training questions and 21 of 272 closed test questions, leaving
    1,713 training (829 yes) and 251 test questions (118 yes; majority answer 0.530). Answers are
    compared lower-cased and stripped.

    Inputs: ``{"image": uint8 [C, H, W] (C = 1 for grey images, 3 for the few colour ones; longer side
    at most 256 px), "question": str}``. Subject = the image, so the validation part carved from the
    official training split keeps all questions of an image together. Every test image also occurs in
    training (the load logs it), and some test questions repeat a training question word for word: the
    ``unseen_question`` eval set holds the test questions whose normalised text occurs nowhere in the
    official training file (any answer type, the validation part included), 194 of the 251. Groups:
    the image's ``organ`` (head, chest, abdomen) and ``modality`` (ct, mr, xray, or radiology when its
    questions do not say).
    """

    info = TaskInfo(
        kind="vqa",
        modality="radiology",
        description="VQA-RAD closed questions answered yes/no (official split)",
        source="vqa_rad",
        folder="vqa-rad",
        classes=ANSWERS,
        split="official",
        groups=("organ", "modality"),
        eval_sets=("unseen_question",),
        protocols=("linear_probe",),
        classical="question_logreg",
        citation=(
            "Lau JJ, Gayen S, Ben Abacha A, Demner-Fushman D. A dataset of clinically generated visual "
            "questions and answers about radiology images. Scientific Data 5:180251, 2018."
        ),
    )

    def examples(self) -> Iterator[Example]:
        source = open_source(self.info.source, self.root, unit="qa", max_size=IMAGE_SIZE)
        records = [qa for questions in source.questions.values() for qa in questions]
        training_questions = {
            normalise_text(qa["question"]) for qa in records if qa["official_split"] == "train"
        }
        left_out = Counter(
            qa["official_split"]
            for qa in records
            if is_closed(qa.get("answer_type")) and normalise_text(qa["answer"]) not in ANSWERS
        )
        log.info(
            "task %s: left out %d closed question(s) not answered yes/no (%s)",
            self.name,
            sum(left_out.values()),
            ", ".join(f"{split} {n}" for split, n in sorted(left_out.items())),
        )
        for sample in source:
            meta = sample["meta"]
            answer = normalise_text(sample["answer"])
            if not is_closed(meta["answer_type"]) or answer not in ANSWERS:
                continue
            test = meta["official_split"] == "test"
            yield Example(
                inputs={"image": sample["image"], "question": sample["question"]},
                label=answer,
                subject=meta["subject_id"],
                sample_id=meta["sample_id"],
                official_split=meta["official_split"],
                groups={"organ": meta["labels"].get("organ", "unknown"), "modality": meta["modality"]},
                flags={
                    "unseen_question": test and normalise_text(sample["question"]) not in training_questions
                },
            )


def is_closed(answer_type: object) -> bool:
    return str(answer_type).strip().upper() == "CLOSED"
