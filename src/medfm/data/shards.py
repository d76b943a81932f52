"""Corpus shards: WebDataset tar files written per split, and a streaming reader for (DDP) training.

Each sample in a shard is ``<key>.png`` (uint8, 1 or 3 channels) plus ``<key>.json`` (its catalog row).
Readers split work by shard: rank ``r`` of ``w`` takes shards ``r, r + w, ...``, and each DataLoader worker
of that rank takes every ``num_workers``-th of those, so no two readers ever open the same shard.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from medfm.errors import DataError

CATALOG = "catalog.parquet"
LINKS = "links.parquet"  # derived pictures linked to their originals' subjects (corpus build)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``[C, H, W]`` uint8 image (fast compression level: shards are written once)."""
    plane = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    buffer = io.BytesIO()
    Image.fromarray(plane).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    array = np.array(Image.open(io.BytesIO(data)))  # a writable copy, as torch.from_numpy expects
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


class ShardSetWriter:
    """Writes one split's samples into ``n_shards`` tar files, named ``<split>-000000.tar`` ...

    Plain POSIX (ustar) members, the layout WebDataset reads; the writer returns where each PNG's bytes
    start, so the catalog can fetch any one picture with a seek instead of scanning its shard.
    """

    def __init__(self, directory: Path, split: str, n_shards: int):
        self.names = [f"{split}-{i:06d}.tar" for i in range(n_shards)]
        self._tars = [tarfile.open(directory / name, "w", format=tarfile.USTAR_FORMAT) for name in self.names]  # noqa: SIM115 (closed in close())

    def write(self, shard: int, key: str, png: bytes, record: dict[str, Any]) -> tuple[str, int]:
        """Add ``<key>.png`` and ``<key>.json``; return the shard name and the PNG's byte offset in it."""
        tar = self._tars[shard]
        offset = self._add(tar, f"{key}.png", png)
        self._add(tar, f"{key}.json", json.dumps(record).encode())
        return self.names[shard], offset

    @staticmethod
    def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        start = tar.offset
        tar.addfile(info, io.BytesIO(data))
        return start + tarfile.BLOCKSIZE  # a ustar header is one block

    def close(self) -> None:
        for tar in self._tars:
            tar.close()


def catalog_path(corpus: str | Path) -> Path:
    """``<corpus>/catalog.parquet``; a :class:`DataError` when the folder is not a built corpus."""
    path = Path(corpus) / CATALOG
    if not path.is_file():
        raise DataError(f"{corpus} is not a built corpus (no {CATALOG}); run `medfm data build` first")
    return path


def read_picture(corpus: str | Path, shard: str, offset: int, size: int) -> np.ndarray:
    """One stored picture, ``[C, H, W]`` uint8, read by its catalog ``shard``/``png_offset``/``png_size``."""
    with open(Path(corpus) / shard, "rb") as handle:
        handle.seek(offset)
        return decode_png(handle.read(size))


def rank_and_world() -> tuple[int, int]:
    """This process's rank and world size: from torch.distributed if started, else torchrun's variables."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StreamingCorpus(IterableDataset):
    """Stream one split of a built corpus as ``{"image": float tensor [C, H, W] in [0, 1], "meta": dict}``.

    Options: ``channels`` 1 or 3 (convert on the fly; None keeps what is stored), ``shuffle`` (shard order
    and a sample buffer of that size; 0 for file order), ``seed`` and :meth:`set_epoch` for a new order each
    epoch, ``transform`` applied to each sample dict, ``equal_per_rank`` to stop every rank after the same
    number of samples (so a DDP step never waits on a rank that ran out).
    """

    def __init__(
        self,
        corpus: str | Path,
        split: str = "train",
        *,
        channels: int | None = None,
        shuffle: int = 1000,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        equal_per_rank: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.root = Path(corpus)
        catalog = pd.read_parquet(catalog_path(self.root), columns=["split", "shard"])
        counts = catalog[catalog["split"] == split].groupby("shard").size()
        if counts.empty:
            splits = sorted(catalog["split"].unique())
            raise DataError(f"corpus {self.root} has no samples in split {split!r} (splits: {splits})")
        self.shard_sizes = counts.to_dict()
        self.split, self.channels, self.shuffle, self.seed = split, channels, shuffle, seed
        self.transform, self.equal_per_rank = transform, equal_per_rank
        detected_rank, detected_world = rank_and_world()
        self.rank = detected_rank if rank is None else rank
        self.world_size = detected_world if world_size is None else world_size
        if len(self.shard_sizes) < self.world_size:
            raise DataError(
                f"split {split!r} has {len(self.shard_sizes)} shards for {self.world_size} ranks; "
                "rebuild with a smaller shard_size so every rank gets at least one shard"
            )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_shards(self, rank: int | None = None) -> list[str]:
        """The shards a rank reads (sorted names, every ``world_size``-th starting at ``rank``)."""
        names = sorted(self.shard_sizes)
        return names[self.rank if rank is None else rank :: self.world_size]

    def samples_per_rank(self) -> int:
        """Samples each rank yields per epoch (the smallest rank's count when ``equal_per_rank``)."""
        totals = [sum(self.shard_sizes[s] for s in self.rank_shards(r)) for r in range(self.world_size)]
        return min(totals) if self.equal_per_rank else totals[self.rank]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shards = self.rank_shards()
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch, self.rank)).permutation(len(shards))
            shards = [shards[i] for i in order]
        portions = [shards[w::n_workers] for w in range(n_workers)]
        # Share this rank's quota among workers in proportion to what their shards hold, so each rank
        # yields exactly samples_per_rank() samples, none twice, whatever the number of workers.
        quota = _allocate(self.samples_per_rank(), [sum(self.shard_sizes[s] for s in p) for p in portions])
        mine, limit = portions[worker_id], quota[worker_id]
        if not mine or not limit:
            return
        pipeline = wds.WebDataset(
            [str(self.root / name) for name in mine],
            shardshuffle=False,
            nodesplitter=None,
            workersplitter=None,
            empty_check=False,
        )
        if self.shuffle:
            pipeline = pipeline.shuffle(
                self.shuffle, rng=random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker_id}")
            )
        for count, raw in enumerate(pipeline):
            if count >= limit:
                break
            yield self._sample(raw)

    def _sample(self, raw: dict[str, Any]) -> dict[str, Any]:
        image = decode_png(raw["png"])
        if self.channels == 3 and image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)
        elif self.channels == 1 and image.shape[0] == 3:
            image = np.array(Image.fromarray(np.moveaxis(image, 0, -1)).convert("L"))[None]
        sample = {"image": torch.from_numpy(image).float().div_(255.0), "meta": json.loads(raw["json"])}
        return self.transform(sample) if self.transform else sample


def _allocate(total: int, capacities: list[int]) -> list[int]:
    """Split ``total`` (<= ``sum(capacities)``) in proportion to ``capacities``, no part above its cap."""
    whole = sum(capacities)
    parts = [total * c // whole if whole else 0 for c in capacities]
    for i in np.argsort(capacities)[::-1]:
        if sum(parts) == total:
            break
        parts[i] += min(capacities[i] - parts[i], total - sum(parts))
    return parts
