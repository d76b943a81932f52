"""Smaller versions of a task: a random subset of every split (smoke runs), or of the training subjects
only (a data perturbation: validation and test never change, so results stay comparable)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfm.errors import ConfigError
from medfm.evaluate.bootstrap import examples_of, group_by_subject
from medfm.evaluate.tasks import TaskData
from medfm.evaluate.tasks.base import check_splits
from medfm.log import get_logger

log = get_logger("evaluate")

TRAIN_SUBSAMPLE_MODES = ("all", "bootstrap", "fraction")


@dataclass
class TrainSubsample:
    """Which training subjects a run learns from.

    ``all`` keeps the training split; ``bootstrap`` draws as many subjects as it holds, with replacement
    (a subject drawn twice counts twice); ``fraction`` keeps that share of its subjects. A subject's
    examples always move together.
    """

    mode: str = "all"
    fraction: float = 1.0
    seed: int = -1  # -1: the run's seed

    def check(self) -> TrainSubsample:
        if self.mode not in TRAIN_SUBSAMPLE_MODES:
            raise ConfigError(
                f"train_subsample.mode must be one of {TRAIN_SUBSAMPLE_MODES}, got {self.mode!r}"
            )
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"train_subsample.fraction must lie in (0, 1], got {self.fraction}")
        return self


def train_rows(data: TaskData, spec: TrainSubsample, seed: int) -> np.ndarray:
    """Positions in ``data`` (the training part of a task) of the examples to learn from, subject by
    subject in drawn order; refuses a draw that leaves a single class."""
    if spec.mode == "all":
        return np.arange(len(data))
    rng = np.random.default_rng(spec.seed if spec.seed >= 0 else seed)
    groups = group_by_subject(data.subjects.astype(str))
    count = len(groups[2])
    if spec.mode == "bootstrap":
        drawn = rng.integers(0, count, size=count)
    else:
        drawn = np.sort(rng.choice(count, size=max(1, round(spec.fraction * count)), replace=False))
    rows = examples_of(drawn, groups)
    subset = data.select(rows)
    if data.info.multilabel:
        constant = [c for c, n in subset.class_counts().items() if n in (0, len(subset))]
    else:
        constant = [] if len([n for n in subset.class_counts().values() if n]) > 1 else ["all"]
    if constant:
        raise ConfigError(
            f"task {data.name}: the training subsample ({spec.mode}, fraction {spec.fraction}) has "
            f"{len(np.unique(drawn))} subjects and no longer holds every outcome; use a larger fraction"
        )
    log.info(
        "task %s: training on %d of %d examples (%s of the training subjects)",
        data.name,
        len(rows),
        len(data),
        "a bootstrap" if spec.mode == "bootstrap" else f"{spec.fraction:.0%}",
    )
    return rows


def limit_examples(data: TaskData, size: int, seed: int) -> TaskData:
    """About ``size`` examples drawn at random, each split shrunk by the same factor (at least 2 kept)."""
    rng = np.random.default_rng(seed)
    keep = []
    for part in ("train", "val", "test"):
        index = np.flatnonzero(data.split == part)
        share = max(2, round(len(index) * size / len(data))) if len(index) else 0
        keep.append(rng.choice(index, size=min(share, len(index)), replace=False))
    subset = data.select(np.sort(np.concatenate(keep)))
    check_splits(subset)
    log.info("task %s: a random %d of %d examples (limit=%d)", data.name, len(subset), len(data), size)
    return subset
