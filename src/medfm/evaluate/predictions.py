"""What a protocol returns: probabilities for every test example, with what scoring needs beside them.

Scoring turns predictions into *result rows*, one per (task, model, protocol, setting, eval set,
subgroup, metric), with the columns of :data:`RESULT_COLUMNS`. ``ci_low`` / ``ci_high`` are the 95 %
subject-level bootstrap interval (few-shot rows: the 2.5-97.5 % range over repeated draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESULT_COLUMNS = (
    "task",
    "modality",
    "model",
    "protocol",
    "setting",
    "eval_set",
    "subgroup",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "n_subjects",
)


def with_all_classes(prob: np.ndarray, present: np.ndarray, outputs: int) -> np.ndarray:
    """Class probabilities ``[N, outputs]`` from a classifier that saw only the classes ``present``
    (scikit-learn's ``classes_``); a class it never saw in training gets probability 0."""
    if prob.shape[1] == outputs:
        return prob
    full = np.zeros((len(prob), outputs))
    full[:, present] = prob
    return full


@dataclass
class Predictions:
    """``prob`` is ``[N, C]`` class probabilities (rows sum to 1) or, for multi-label tasks, ``[N, K]``
    independent label probabilities; ``y`` is int ``[N]`` or multi-hot ``[N, K]``."""

    task: str
    model: str
    protocol: str
    classes: tuple[str, ...]
    multilabel: bool
    y: np.ndarray
    prob: np.ndarray
    subjects: np.ndarray
    sample_ids: np.ndarray
    setting: str = ""
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    flags: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.prob) != len(self.y) or len(self.subjects) != len(self.y):
            raise ValueError(
                f"predictions of {self.task}/{self.model}/{self.protocol}: {len(self.prob)} rows, "
                f"{len(self.y)} labels and {len(self.subjects)} subjects"
            )
        if self.prob.ndim != 2 or self.prob.shape[1] != len(self.classes):
            raise ValueError(f"prob must be [N, {len(self.classes)}], got {self.prob.shape}")

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.task, self.model, self.protocol, self.setting) if p)

    def select(self, mask: np.ndarray) -> Predictions:
        return Predictions(
            task=self.task,
            model=self.model,
            protocol=self.protocol,
            classes=self.classes,
            multilabel=self.multilabel,
            y=self.y[mask],
            prob=self.prob[mask],
            subjects=self.subjects[mask],
            sample_ids=self.sample_ids[mask],
            setting=self.setting,
            groups={k: v[mask] for k, v in self.groups.items()},
            flags={k: v[mask] for k, v in self.flags.items()},
        )

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (plain arrays, no pickle) that :meth:`load` reads back."""
        path = Path(path)
        arrays = {
            "y": self.y,
            "prob": self.prob.astype(np.float32),
            "subjects": self.subjects.astype(str),
            "sample_ids": self.sample_ids.astype(str),
            "classes": np.array(self.classes, dtype=str),
            "header": np.array(
                [self.task, self.model, self.protocol, self.setting, str(int(self.multilabel))], dtype=str
            ),
        }
        arrays.update({f"group.{k}": v.astype(str) for k, v in self.groups.items()})
        arrays.update({f"flag.{k}": v.astype(bool) for k, v in self.flags.items()})
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        with np.load(path, allow_pickle=False) as z:
            task, model, protocol, setting, multilabel = (str(v) for v in z["header"])
            return cls(
                task=task,
                model=model,
                protocol=protocol,
                setting=setting,
                classes=tuple(str(c) for c in z["classes"]),
                multilabel=multilabel == "1",
                y=z["y"],
                prob=z["prob"],
                subjects=z["subjects"].astype(object),
                sample_ids=z["sample_ids"].astype(object),
                groups={k[6:]: z[k] for k in z.files if k.startswith("group.")},
                flags={k[5:]: z[k] for k in z.files if k.startswith("flag.")},
            )
