"""Which corpus pictures show one subject, and the split of each such group.

Subject keys (``"<source>/<subject>"``) tell patients apart within a source only. A corpus also joins
two keys when their pictures share content: a derived picture linked to its original by the thumbnail
match (:mod:`medfm.data.links`), and an exact copy that de-duplication dropped in favour of a picture of
another key. Joined keys form a *group* (connected components, SciPy), and every key of a group goes to
the most held-out split any of its pictures asks for under its own source's rule
(:meth:`medfm.data.splits.SplitRule.vote`): a PneumoniaMNIST test image holds out the paediatric patient
it was cut from, with all of that patient's X-rays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medfm.data.splits import SplitRule, held_out_splits


def subject_groups(keys: Iterable[str], joins: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each key's group, named by its smallest key; ``joins`` are pairs of keys known to be one subject."""
    joins = list(joins)
    names = sorted(set(keys) | {key for pair in joins for key in pair})
    index = {key: i for i, key in enumerate(names)}
    rows = [index[a] for a, _ in joins]
    cols = [index[b] for _, b in joins]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, component = connected_components(graph, directed=False)
    first: dict[int, str] = {}
    for key, group in zip(names, component):
        first.setdefault(group, key)  # names are sorted: the first is the smallest
    return {key: first[group] for key, group in zip(names, component)}


def group_splits(
    table: pd.DataFrame,
    rules: Mapping[str, SplitRule],
    fractions: Mapping[str, float],
    seed: int = 0,
    voters: pd.DataFrame | None = None,
) -> pd.Series:
    """The split of every row of ``table`` (columns ``adapter``, ``subject_key``, ``group``,
    ``official_split``): each row votes under its adapter's rule, each group takes its most held-out vote.

    ``voters`` (same columns) vote without being assigned: pictures dropped as exact copies of a kept one,
    whose own rule may hold the group out (an official test copy of a training picture)."""
    every = table if voters is None else pd.concat([table, voters], ignore_index=True)
    votes = pd.DataFrame(
        {
            "group": every["group"].to_numpy(),
            "vote": [
                rules[adapter].vote(key, official, fractions, seed)
                for adapter, key, official in zip(
                    every["adapter"], every["subject_key"], every["official_split"]
                )
            ],
        }
    )
    return table["group"].map(held_out_splits(votes, subject="group"))
