"""Subject-level splits: every subject lands in exactly one split, decided by a keyed hash of its id.

A hash (not a shuffle) keeps each subject's split stable when sources are added or removed, and makes the
assignment independent of file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import pandas as pd


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


def subject_splits(
    subject_keys: Iterable[str], fractions: Mapping[str, float], seed: int = 0
) -> dict[str, str]:
    check_fractions(fractions)
    return {key: assign_split(key, fractions, seed) for key in set(subject_keys)}


def subjects_in_several_splits(
    table: pd.DataFrame, subject: str = "subject_key", split: str = "split"
) -> list[str]:
    """Subjects that occur in more than one split (the leak a corpus must never have)."""
    counts = table.groupby(subject)[split].nunique()
    return sorted(counts[counts > 1].index)
