"""Subject-level splits: every subject lands in exactly one split, decided by a keyed hash of its id.

A hash (not a shuffle) keeps each subject's split stable when sources are added or removed, and makes the
assignment independent of file order.

A source declares its :class:`SplitRule`, which the corpus builder and the evaluation tasks over that
source both follow, so that an encoder pretrained on a corpus never saw a task's test subject: the same
subject key (``"<source>/<subject>"``), the same fractions, and the dataset's official test split held out
whenever a task evaluates on it. A corpus subject is held out as test when any of its samples votes test
under its source's rule (through a derived image linked to its original too, see
:mod:`medfm.data.links`), otherwise as validation when one votes validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

SPLIT_ORDER = ("train", "val", "test")  # later wins when a subject's samples vote differently
OFFICIAL_NAMES = {"test": "test", "testing": "test", "val": "val", "valid": "val", "validation": "val"}


@dataclass(frozen=True)
class SplitRule:
    """How a source's subjects are split, in a corpus and in the evaluation tasks over the source.

    ``fractions``: the keyed-hash split's fractions (None: the corpus's, 0.8 / 0.1 / 0.1 by default);
    ``official_test``: a task evaluates on the dataset's official test split, so its samples are held out
    as test whatever the hash says; ``hashed``: the other samples are split by keyed hash (else the corpus
    trains on every sample of the official training and validation splits, and hashes only samples
    without an official split). Only test subjects must never be pretrained on: a task's validation part
    may overlap a corpus's training split.
    """

    fractions: tuple[tuple[str, float], ...] | None = None
    hashed: bool = True
    official_test: bool = False

    def vote(
        self, subject_key: str, official: str | None, fractions: Mapping[str, float], seed: int = 0
    ) -> str:
        """The split one sample asks for its subject."""
        if self.official_test and OFFICIAL_NAMES.get(str(official or "").lower()) == "test":
            return "test"
        if not self.hashed and official:
            return "train"
        return assign_split(subject_key, dict(self.fractions) if self.fractions else fractions, seed)


def check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")


def assign_split(subject_key: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """The split of one subject: a uniform number in [0, 1) from BLAKE2b(seed, key), cut by ``fractions``."""
    digest = hashlib.blake2b(f"{seed}:{subject_key}".encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for name, fraction in fractions.items():
        edge += fraction
        if position < edge:
            return name
    return list(fractions)[-1]


def held_out_splits(votes: pd.DataFrame, subject: str = "subject_key", vote: str = "vote") -> pd.Series:
    """Each subject's split: the most held-out of its samples' votes (test over val over train)."""
    rank = votes[vote].map({name: i for i, name in enumerate(SPLIT_ORDER)})
    return rank.groupby(votes[subject]).max().map(dict(enumerate(SPLIT_ORDER)))


def subjects_in_several_splits(
    table: pd.DataFrame, subject: str = "subject_key", split: str = "split"
) -> list[str]:
    """Subjects that occur in more than one split (the leak a corpus must never have)."""
    counts = table.groupby(subject)[split].nunique()
    return sorted(counts[counts > 1].index)
