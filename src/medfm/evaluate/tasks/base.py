"""The contract of a downstream task, the task registry, and the checks every task's data passes.

A task names its data (a source folder read by a :mod:`medfm.data.sources` adapter), its label space,
its split rule, its modality and input kind. A subclass only says how to read examples
(:meth:`Task.examples`); :meth:`Task.load` turns them into one columnar :class:`TaskData`, assigns
splits, removes byte-identical duplicates and refuses data no honest evaluation can use (an unknown
label, a split holding a single class) with a message naming the task, the split and the samples.

Subject splits use the rule of the corpus builder (:mod:`medfm.data.splits`: keyed hash of
``"<source>/<subject>"``, train 0.8 / val 0.1 / test 0.1, seed 0), so a task's test subjects are the
ones a medfm corpus of the same source holds out: an encoder pretrained on that corpus never saw them.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medfm.data.splits import OFFICIAL_NAMES, assign_split, check_fractions
from medfm.errors import ConfigError, DataError
from medfm.log import get_logger
from medfm.registry import Registry

log = get_logger("evaluate.tasks")

INPUT_KINDS = ("image", "volume", "signal", "series", "vqa")
SPLITS = ("train", "val", "test")
CORPUS_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
PROTOCOLS = ("linear_probe", "knn", "finetune", "fewshot")


@dataclass(frozen=True)
class TaskInfo:
    """What a task is. ``classes`` is the label space; ``None`` means "the labels of the training split"
    (generic tasks over a user's folder)."""

    kind: str  # input kind: image | volume | signal | series | vqa
    modality: str
    description: str
    source: str  # the adapter (and corpus source name) the data comes from
    folder: str = ""  # default folder under MEDFM_DATA_ROOT
    classes: tuple[str, ...] | None = None
    multilabel: bool = False
    split: str = "subject"  # "subject" (keyed hash, see module doc) or "official"
    fractions: tuple[tuple[str, float], ...] = tuple(CORPUS_FRACTIONS.items())
    groups: tuple[str, ...] = ()  # metadata columns reported per subgroup (e.g. sex, age_band)
    eval_sets: tuple[str, ...] = ()  # named subsets of the test split (flags of each example)
    protocols: tuple[str, ...] = PROTOCOLS  # protocols that make sense for this task
    classical: str | None = None  # the customary classical baseline (see medfm.evaluate.classical)
    encoder: str | None = None  # registered encoder for non-image kinds (trained from scratch here)
    dedupe: bool = False  # drop byte-identical inputs (keep the first)
    citation: str = ""

    def __post_init__(self):
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"task kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        if self.split not in ("subject", "official"):
            raise ValueError(f"task split must be 'subject' or 'official', got {self.split!r}")
        check_fractions(dict(self.fractions))
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"unknown protocol(s) {unknown}; known: {PROTOCOLS}")


@dataclass
class Example:
    """One labelled sample as a task reads it.

    ``inputs`` by kind: image ``{"image": uint8 or float [C, H, W]}``; volume ``{"volume": float32
    [C, D, H, W]}``; signal ``{"signal": float32 [leads, T]}``; series ``{"series": float32 [T, F] (NaN
    where missing), "mask": bool [T, F]}``; vqa ``{"image": ..., "question": str}``. ``label`` is a class
    name, or for multi-label tasks the tuple of classes present (possibly empty).
    """

    inputs: dict[str, Any]
    label: str | tuple[str, ...]
    subject: str
    sample_id: str
    official_split: str | None = None
    groups: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)


@dataclass
class TaskData:
    """A task's examples as columns. ``y`` is int64 ``[N]`` (class index) or float32 ``[N, K]``
    (multi-hot); every other column has one entry per example, in the same order."""

    name: str
    info: TaskInfo
    classes: tuple[str, ...]
    inputs: dict[str, list[Any]]
    y: np.ndarray
    subjects: np.ndarray
    sample_ids: np.ndarray
    split: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    flags: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_outputs(self) -> int:
        """Columns of a prediction: classes (single-label) or labels (multi-label)."""
        return len(self.classes)

    def select(self, index: np.ndarray | Sequence[int]) -> TaskData:
        """The examples at ``index`` (integer positions or a boolean mask), as a new TaskData."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return TaskData(
            name=self.name,
            info=self.info,
            classes=self.classes,
            inputs={key: [values[i] for i in index] for key, values in self.inputs.items()},
            y=self.y[index],
            subjects=self.subjects[index],
            sample_ids=self.sample_ids[index],
            split=self.split[index],
            groups={key: values[index] for key, values in self.groups.items()},
            flags={key: values[index] for key, values in self.flags.items()},
        )

    def part(self, split: str) -> TaskData:
        return self.select(self.split == split)

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        y = self.y if split is None else self.y[self.split == split]
        if self.info.multilabel:
            return {c: int(n) for c, n in zip(self.classes, y.sum(axis=0))}
        return {c: int((y == i).sum()) for i, c in enumerate(self.classes)}


class Task(ABC):
    """Base class of tasks. Subclasses set ``info`` and implement :meth:`examples`.

    ``root`` defaults to ``$MEDFM_DATA_ROOT/<info.folder>``; ``limit`` reads at most that many examples
    (smoke runs; the split checks still apply).
    """

    name: ClassVar[str] = ""
    info: ClassVar[TaskInfo]

    def __init__(self, root: str | Path | None = None, *, limit: int | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root(self.info.folder, self.name)
        if not self.root.exists():
            raise DataError(f"task {self.name}: data folder does not exist: {self.root}")
        self.limit = limit

    @abstractmethod
    def examples(self) -> Iterator[Example]:
        """Yield the task's labelled examples (all splits)."""

    def label_space(self, examples: list[Example], split: np.ndarray) -> tuple[str, ...]:
        """The classes: ``info.classes``, or else the sorted labels of the training split."""
        if self.info.classes is not None:
            return self.info.classes
        train = [e.label for e, s in zip(examples, split) if s == "train"]
        if self.info.multilabel:
            return tuple(sorted({c for labels in train for c in labels}))
        return tuple(sorted(set(train)))

    def load(self) -> TaskData:
        """Read, de-duplicate, split and check the examples; raise :class:`DataError` when unusable."""
        examples = []
        for example in self.examples():
            examples.append(example)
            if self.limit is not None and len(examples) >= self.limit:
                break
        if not examples:
            raise DataError(f"task {self.name}: no examples found under {self.root}")
        if self.info.dedupe:
            examples = drop_identical(examples, self.name)
        official = self.info.split == "official"
        has_val = official and any(official_split(e, self.info.source) == "val" for e in examples)
        split = np.array([self.split_of(e, has_val) for e in examples])
        classes = self.label_space(examples, split)
        data = TaskData(
            name=self.name,
            info=self.info,
            classes=classes,
            inputs={key: [e.inputs[key] for e in examples] for key in examples[0].inputs},
            y=encode_labels(examples, classes, split, self.name, self.info),
            subjects=np.array([e.subject for e in examples], dtype=object),
            sample_ids=np.array([e.sample_id for e in examples], dtype=object),
            split=split,
            groups={g: np.array([e.groups.get(g, "unknown") for e in examples]) for g in self.info.groups},
            flags={f: np.array([bool(e.flags.get(f, False)) for e in examples]) for f in self.info.eval_sets},
        )
        check_splits(data)
        log.info(
            "task %s: %d examples (%s), classes %s",
            self.name,
            len(data),
            ", ".join(f"{s} {int((split == s).sum())}" for s in SPLITS),
            data.class_counts("train"),
        )
        return data

    def split_of(self, example: Example, official_val: bool = False) -> str:
        """The example's split; ``official_val`` says the dataset has its own validation split (else one
        is carved from its training split)."""
        if self.info.split == "official":
            return official_split(example, self.info.source, carve_val=not official_val)
        return assign_split(f"{self.info.source}/{example.subject}", dict(self.info.fractions))


def default_root(folder: str, task: str) -> Path:
    data_root = os.environ.get("MEDFM_DATA_ROOT")
    if not data_root:
        raise ConfigError(
            f"task {task}: no data folder given and MEDFM_DATA_ROOT is not set "
            f"(set it to the folder that holds {folder or 'the dataset'}/)"
        )
    return Path(data_root) / folder


def official_split(example: Example, source: str, carve_val: bool = False) -> str:
    """The dataset's own split; a validation part is carved from its training split by subject when the
    dataset has none (10 %, keyed hash, so it never holds a subject of the remaining training part)."""
    name = (example.official_split or "").lower()
    if name in OFFICIAL_NAMES:
        return OFFICIAL_NAMES[name]
    if name in ("train", "training"):
        return (
            assign_split(f"{source}/{example.subject}", {"train": 0.9, "val": 0.1}) if carve_val else "train"
        )
    raise DataError(f"sample {example.sample_id!r} has no official split (got {example.official_split!r})")


def inputs_digest(inputs: dict[str, Any], *, text: bool = True) -> bytes:
    """A digest of one example's inputs: arrays by dtype, shape and bytes; strings too unless ``text``
    is False (a VQA question does not change the image features)."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(inputs):
        value = inputs[key]
        if hasattr(value, "__array__"):  # NumPy arrays (and tensors)
            array = np.ascontiguousarray(np.asarray(value))
            digest.update(f"{key}{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        elif text:
            digest.update(f"{key}{value}".encode())
    return digest.digest()


def drop_identical(examples: list[Example], task: str) -> list[Example]:
    """Keep the first of each group of examples whose inputs are byte-identical."""
    seen: set[bytes] = set()
    kept = []
    for example in examples:
        key = inputs_digest(example.inputs)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    if len(kept) < len(examples):
        log.info("task %s: dropped %d byte-identical duplicate(s)", task, len(examples) - len(kept))
    return kept


def encode_labels(
    examples: list[Example], classes: tuple[str, ...], split: np.ndarray, task: str, info: TaskInfo
) -> np.ndarray:
    """Class indices ``[N]`` or a multi-hot ``[N, K]``; a label outside ``classes`` is an error."""
    multilabel = info.multilabel
    origin = "the task's classes are" if info.classes is not None else "the training split has"
    index = {c: i for i, c in enumerate(classes)}
    for example, part in zip(examples, split):
        labels = example.label if multilabel else (example.label,)
        unknown = [c for c in labels if c not in index]
        if unknown:
            raise DataError(
                f"task {task}: sample {example.sample_id!r} ({part} split) has unknown label {unknown[0]!r}; "
                f"{origin} {list(classes)}"
            )
    if multilabel:
        y = np.zeros((len(examples), len(classes)), dtype=np.float32)
        for row, example in enumerate(examples):
            y[row, [index[c] for c in example.label]] = 1
        return y
    return np.array([index[e.label] for e in examples], dtype=np.int64)


def check_splits(data: TaskData) -> None:
    """A task needs a training and a test split, each holding every outcome at least once.

    Single-label: at least two classes in each split. Multi-label: every label both present and absent
    in each split (otherwise its AUROC is undefined and a probe cannot learn it).
    """
    for part in ("train", "test"):
        count = int((data.split == part).sum())
        if count == 0:
            raise DataError(f"task {data.name}: the {part} split is empty")
        counts = data.class_counts(part)
        if data.info.multilabel:
            constant = [c for c, n in counts.items() if n in (0, count)]
            if constant:
                raise DataError(
                    f"task {data.name}: in the {part} split ({count} samples) label(s) {constant} are "
                    f"{'always' if counts[constant[0]] else 'never'} present; each label needs both outcomes"
                )
        else:
            present = {c: n for c, n in counts.items() if n}
            if len(present) < 2:
                raise DataError(
                    f"task {data.name}: the {part} split holds a single class {present} "
                    f"({count} samples); a classifier needs at least two"
                )
    leaked = set(data.subjects[data.split == "test"]) & set(data.subjects[data.split != "test"])
    if leaked and data.info.split == "subject":
        raise DataError(f"task {data.name}: {len(leaked)} subject(s) in the test and another split")
    if leaked:
        log.warning(
            "task %s: %d subject(s) occur in the official test split and in training: the dataset's own "
            "split shares them, so its test scores are optimistic (see the task's description)",
            data.name,
            len(leaked),
        )


TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register a task under ``name`` and record the name on the class."""

    def add(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name, cls, aliases=aliases)

    return add
