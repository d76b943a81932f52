"""Corpus pictures for training: random access by catalog offset, each sample turned into a method's views.

Reading by offset (``os.pread`` on the shard, no shared file position) lets the engine's resumable sampler
visit pictures in any order, from any worker process, and resume mid-epoch at the exact sample.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medfm.data.shards import catalog_path, decode_png
from medfm.engine.data import sample_generator
from medfm.errors import DataError
from medfm.pretrain.base import View


def corpus_rows(
    corpus: str | Path,
    *,
    split: str = "train",
    modalities: list[str] | None = None,
    sources: list[str] | None = None,
    fraction: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """The catalog rows of ``split`` kept by the filters: ``modalities`` / ``sources`` (empty: all) and
    a seeded random ``fraction`` of what is left."""
    root = Path(corpus)
    columns = ["split", "source", "modality", "shard", "png_offset", "png_size"]
    table = pd.read_parquet(catalog_path(root), columns=columns)
    rows = table[table["split"] == split]
    for column, wanted in (("modality", modalities), ("source", sources)):
        if wanted:
            unknown = sorted(set(wanted) - set(table[column]))
            if unknown:
                raise DataError(
                    f"corpus {root} has no {column} {unknown} (it has {sorted(set(table[column]))})"
                )
            rows = rows[rows[column].isin(wanted)]
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    if fraction < 1:
        keep = np.random.default_rng(seed).permutation(len(rows))[: max(1, round(fraction * len(rows)))]
        rows = rows.iloc[np.sort(keep)]
    if rows.empty:
        raise DataError(f"no pictures left in split {split!r} of {root} after filtering")
    return rows


class CorpusImages(Dataset):
    """One split of a built corpus as ``view(image, generator)`` samples, indexed by ``(index, seed)``.

    ``modalities`` / ``sources`` keep only those rows (empty: all); ``fraction`` keeps a seeded random
    share of the pictures (a data-size axis for scaling studies).
    """

    def __init__(
        self,
        corpus: str | Path,
        view: View,
        *,
        split: str = "train",
        modalities: list[str] | None = None,
        sources: list[str] | None = None,
        fraction: float = 1.0,
        seed: int = 0,
    ):
        self.root = Path(corpus)
        rows = corpus_rows(
            self.root, split=split, modalities=modalities, sources=sources, fraction=fraction, seed=seed
        )
        self.view = view
        self.shards = sorted(rows["shard"].unique())
        self.shard_index = rows["shard"].map({s: i for i, s in enumerate(self.shards)}).to_numpy(np.int32)
        self.offsets = rows["png_offset"].to_numpy(np.int64)
        self.sizes = rows["png_size"].to_numpy(np.int64)
        self.modality = rows["modality"].to_numpy()
        self.counts = rows.groupby("modality").size().to_dict()
        self._files: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, index: int) -> torch.Tensor:
        """Picture ``index`` as float ``[C, H, W]`` in [0, 1]."""
        if os.getpid() != self._pid:  # a forked worker: its own descriptors
            self._files, self._pid = {}, os.getpid()
        shard = int(self.shard_index[index])
        if shard not in self._files:
            self._files[shard] = os.open(self.root / self.shards[shard], os.O_RDONLY)
        data = os.pread(self._files[shard], int(self.sizes[index]), int(self.offsets[index]))
        return torch.from_numpy(decode_png(data)).float().div_(255.0)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        return self.view(self.read(index), sample_generator(seed))

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._files.values():
                os.close(fd)
