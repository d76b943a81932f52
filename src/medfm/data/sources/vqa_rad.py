"""VQA-RAD: radiology images with clinician-written questions and answers."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.data.sources.image_folder import read_image
from medfm.data.splits import SplitRule
from medfm.data.tables import check_contained
from medfm.errors import ConfigError, DataError

SPLIT_FILES = {"train": "trainset.json", "test": "testset.json"}
ORGANS = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}
REQUIRED_FIELDS = ("qid", "image_name", "question", "answer")

# Words that name a modality in a question or an answer ("MR - FLAIR", "plain film xray", "noncontrast CT").
MODALITY_WORDS = {
    "mr": re.compile(r"\b(mri?|flair|t[12]|dwi|adc|diffusion)\b|\bt[12][- ]?weighted|\bmr-"),
    "ct": re.compile(r"\bct\b|computed tomography"),
    "xray": re.compile(r"x-? ?ray|\bxr\b|\bcxr\b|radiograph|plain film|\bkub\b"),
}


def modality_named(text: str) -> str | None:
    """The one modality ``text`` names, or ``None`` when it names none or several ("CT or MRI?")."""
    named = {modality for modality, words in MODALITY_WORDS.items() if words.search(text.lower())}
    return named.pop() if len(named) == 1 else None


def modality_from_answers(questions: list[dict[str, Any]]) -> str | None:
    """The modality most MODALITY questions about one image point to.

    A "yes" to "Is this a CT?" names it in the question; other answers ("MR - FLAIR", "ct") name it
    themselves. Negated questions ("What type of imaging does this not represent?") and "no" answers
    say what the image is not, so they are ignored. ``None`` without evidence or on a tie.
    """
    votes: Counter[str] = Counter()
    for qa in questions:
        question, answer = str(qa["question"]).lower(), str(qa["answer"]).strip().lower()
        if str(qa.get("question_type", "")).strip().upper() != "MODALITY" or re.search(r"\bnot\b", question):
            continue
        modality = modality_named(question if answer == "yes" else answer)
        if modality:
            votes[modality] += 1
    ranked = votes.most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


@register_source("vqa_rad")
class VqaRadSource(SourceAdapter):
    """VQA-RAD (``images/`` + ``trainset.json`` + ``testset.json``), by question or by image.

    ``unit="qa"`` yields one sample per question: ``{"image": uint8 [C, H, W], "question": str,
    "answer": str, "meta": {..., "qid", "official_split", "answer_type", "question_type", "image_organ",
    "path", "labels": {"organ"}}}`` with ``sample_id`` like ``"train-17"``. Questions are grouped by image
    (images in order of first appearance, train before test), so each image is decoded once.
    ``unit="image"`` yields each image in ``images/`` once (also the one no question refers to), for image
    corpora: ``{"image", "meta": {..., "path", "splits", "labels": {"organ"}}}``.

    ``subject_id`` is the image name: the dataset has no patient ids, and every test image also occurs
    in the training set, so the official split is not image-disjoint. The modality of an image is taken
    from the answers to its MODALITY questions (ct, mr or xray), else ``"radiology"``; the anatomy is its
    ``image_organ`` (head, chest, abdomen).

    Options:
        unit: ``"qa"`` or ``"image"``.
        max_size, grayscale: passed to :func:`medfm.data.io.load_image`.

    Skips: ``missing_file``, ``unreadable_image`` (one record per image file; in ``qa`` mode its
    questions go with it), ``bad_record`` (a question entry lacking a required field). An ``image_name``
    that is absolute or leads outside ``images/`` (``..``, a symbolic link) is a :class:`DataError`.
    """

    info: ClassVar[SourceInfo] = SourceInfo(
        kind="vqa",
        modality="radiology",
        anatomy="unknown",
        license="CC0 1.0",
        citation=(
            "Lau JJ, Gayen S, Ben Abacha A, Demner-Fushman D. A dataset of clinically generated visual "
            "questions and answers about radiology images. Scientific Data 5:180251, 2018."
        ),
        description="Radiology VQA on head CT/MRI, chest X-ray and abdominal CT; closed and open questions.",
        # the task evaluates on the official test questions: every image they ask about is held out
        split=SplitRule(hashed=False, official_test=True),
    )

    def __init__(
        self,
        root: str | Path,
        *,
        unit: str = "qa",
        max_size: int | None = None,
        grayscale: str = "auto",
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        if unit not in ("qa", "image"):
            raise ConfigError(f"vqa_rad: unit must be 'qa' or 'image', got {unit!r}")
        self.unit = unit
        self.max_size = max_size
        self.grayscale = grayscale
        self.questions = self._questions_by_image()

    def _questions_by_image(self) -> dict[str, list[dict[str, Any]]]:
        """Every usable question of both split files, grouped by image name, each image checked to lie
        in ``images/``."""
        questions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        first_use = []
        for split, file_name in SPLIT_FILES.items():
            for number, record in enumerate(self._read_split(self.root / file_name)):
                if not isinstance(record, dict) or any(record.get(key) is None for key in REQUIRED_FIELDS):
                    self.skips.add(f"{file_name}[{number}]", "bad_record", f"lacks one of {REQUIRED_FIELDS}")
                    continue
                image_name = str(record["image_name"])
                if image_name not in questions:  # many questions share an image: check it once
                    first_use.append((f"{file_name}[{number}] image_name", image_name))
                questions[image_name].append({**record, "official_split": split})
        check_contained(self.root / "images", first_use)
        return questions

    @staticmethod
    def _read_split(path: Path) -> list[Any]:
        if not path.is_file():
            raise DataError(f"VQA-RAD question file {path} does not exist")
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"VQA-RAD question file {path} is not valid JSON: {err}") from None
        if not isinstance(records, list) or not records:
            raise DataError(f"VQA-RAD question file {path} should hold a non-empty list of questions")
        return records

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.unit == "qa":
            return self._by_question()
        return self._by_image()

    def _image_meta(self, image_name: str) -> dict[str, Any]:
        """Meta fields shared by every sample of one image."""
        questions = self.questions.get(image_name, [])
        organs = Counter(str(qa.get("image_organ", "")).upper() for qa in questions)
        organ = ORGANS.get(organs.most_common(1)[0][0]) if organs else None
        return {
            "subject_id": Path(image_name).stem,
            "modality": modality_from_answers(questions),
            "anatomy": organ,
            "labels": {"organ": organ} if organ else {},
            "path": f"images/{image_name}",
        }

    def _by_question(self) -> Iterator[dict[str, Any]]:
        for image_name, questions in self.questions.items():
            shared = self._image_meta(image_name)
            image = read_image(
                self.root, shared["path"], self.skips, max_size=self.max_size, grayscale=self.grayscale
            )
            if image is None:
                continue
            for qa in questions:
                meta = self.meta(
                    sample_id=f"{qa['official_split']}-{qa['qid']}",
                    **shared,
                    qid=qa["qid"],
                    official_split=qa["official_split"],
                    answer_type=str(qa.get("answer_type", "")).strip().upper(),
                    question_type=str(qa.get("question_type", "")).strip().upper(),
                    image_organ=str(qa.get("image_organ", "")),
                )
                # Each sample owns its array, so a consumer editing one in place cannot change the next.
                yield {
                    "image": image.copy(),
                    "question": str(qa["question"]).strip(),
                    "answer": str(qa["answer"]).strip(),
                    "meta": meta,
                }

    def _by_image(self) -> Iterator[dict[str, Any]]:
        names = {path.name for path in (self.root / "images").glob("*.jpg")} | set(self.questions)
        for image_name in sorted(names):
            shared = self._image_meta(image_name)
            image = read_image(
                self.root, shared["path"], self.skips, max_size=self.max_size, grayscale=self.grayscale
            )
            if image is None:
                continue
            splits = sorted({qa["official_split"] for qa in self.questions.get(image_name, [])})
            # an image asked about in the official test split is a test image, wherever else it occurs
            official = "test" if "test" in splits else (splits[0] if splits else None)
            meta = self.meta(sample_id=shared["subject_id"], **shared, splits=splits, official_split=official)
            yield {"image": image, "meta": meta}
