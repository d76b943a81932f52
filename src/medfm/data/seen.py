"""What an encoder saw in pretraining, kept with its bundle, and which evaluation subjects it saw.

A bundle keeps ``seen_subjects.safetensors``: the 64-bit BLAKE2b hashes of the subject keys
(``"<source>/<subject>"``) of every picture it was trained on and of their content groups
(:mod:`medfm.data.subjects`), and the corpus's key -> group pairs for keys whose group is another key, so
that a test subject of a task is found through a derived picture or an exact copy too. Hashes keep the
subject list out of a shared bundle (they can still be tested against a guessed key: a bundle answers
"was this subject in pretraining?" by design).

:func:`seen_by_keys` answers for a task whose source the corpus held. A task over data the corpus holds
under other names (a user's folder, or a derived dataset of a corpus source, or the original of one) is
matched by content instead, with :func:`seen_by_content`: the pictures the encoder was trained on are
read back from the corpus and compared with the task's by exact pixel digest, perceptual hash (within the
corpus's de-duplication radius) and the thumbnail match of :mod:`medfm.data.links`, both ways.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from medfm.data.dedup import near_any, perceptual_hash, pixel_digest
from medfm.data.links import CROPS, DEFAULT_THRESHOLD, FULL, THUMB, best_over_crops, standardised, thumbnails
from medfm.data.shards import read_picture
from medfm.data.transforms import fit_to_size
from medfm.log import progress
from medfm.models.bundle import SEEN_FILE


def key_hash(keys: Iterable[str]) -> np.ndarray:
    """int64 BLAKE2b-64 hashes of subject keys."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big", signed=True)
            for k in keys
        ],
        dtype=np.int64,
    )


@dataclass
class SeenSubjects:
    """Hashed subject keys and groups an encoder was trained on, and the corpus's key -> group pairs."""

    subjects: np.ndarray  # int64, sorted, unique
    keys: np.ndarray  # int64 keys whose group is another key ...
    groups: np.ndarray  # ... and that group's hash

    @classmethod
    def from_corpus(
        cls, catalog: pd.DataFrame, trained: pd.DataFrame, duplicates: pd.DataFrame | None = None
    ):
        """From a corpus catalog (columns ``subject_key``, ``group``), the rows trained on, and the
        de-duplication drops (their ``subject_key`` and ``copy_of``, whose group they join)."""
        pairs = catalog[["subject_key", "group"]]
        if duplicates is not None and len(duplicates):
            group_of = catalog.drop_duplicates("subject_key").set_index("subject_key")["group"]
            dropped = duplicates.assign(group=duplicates["copy_of"].map(group_of)).dropna(subset=["group"])
            pairs = pd.concat([pairs, dropped[["subject_key", "group"]]])
        pairs = pairs.drop_duplicates()
        pairs = pairs[pairs["subject_key"] != pairs["group"]]
        seen = np.unique(key_hash([*trained["subject_key"].unique(), *trained["group"].unique()]))
        return cls(seen, key_hash(pairs["subject_key"]), key_hash(pairs["group"]))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(getattr(self, name)) for name in ("subjects", "keys", "groups")}

    @classmethod
    def load(cls, bundle: str | Path) -> SeenSubjects | None:
        """The record of a bundle folder; None when the bundle has none (trained elsewhere)."""
        from safetensors.numpy import load_file

        path = Path(bundle) / SEEN_FILE
        if not path.is_file():
            return None
        arrays = load_file(str(path))
        return cls(arrays["subjects"], arrays["keys"], arrays["groups"])


def seen_by_keys(seen: SeenSubjects, source: str, subjects: Sequence[str]) -> np.ndarray:
    """bool ``[N]``: whether each subject of ``source`` (or its content group) was trained on."""
    hashes = key_hash(f"{source}/{s}" for s in subjects)
    in_trained_group = seen.keys[np.isin(seen.groups, seen.subjects)]  # a key can be in several pairs
    return np.isin(hashes, seen.subjects) | np.isin(hashes, in_trained_group)


@dataclass
class CorpusPictures:
    """The pictures an encoder was trained on, as a corpus holds them (for matching by content)."""

    root: Path
    rows: pd.DataFrame  # catalog rows: split, shard, png_offset, png_size, sha256, phash
    image_size: int
    fit: str
    near_bits: int


def seen_by_content(
    pictures: Sequence[np.ndarray],
    corpus: CorpusPictures,
    threshold: float = DEFAULT_THRESHOLD,
    chunk: int = 2048,
    calibration: int = 2048,
) -> tuple[np.ndarray, float]:
    """bool ``[N]``: whether each picture (``[C, H, W]``, as a task reads it) shows a picture the encoder
    was trained on: the same pixels after the corpus's fitting, a near perceptual hash, or a thumbnail
    match either way (one a crop of the other); and the thumbnail r above which a match counts.

    Thumbnails of small corpus pictures are blurred, so different patients' pictures correlate more: the
    cut is ``threshold`` or, when higher, the best r between ``calibration`` corpus pictures and the
    pictures of *other* subjects (known different patients), so that it links none of those."""
    fitted = [fit_to_size(np.asarray(p), corpus.image_size, corpus.fit) for p in pictures]
    seen = np.isin([pixel_digest(f) for f in fitted], corpus.rows["sha256"].to_numpy())
    if corpus.near_bits >= 0:
        trained = [int(h, 16) for h in corpus.rows["phash"]]
        seen |= near_any(trained, [perceptual_hash(f) for f in fitted], corpus.near_bits)
    rows = corpus.rows.reset_index(drop=True)
    sample = rows.iloc[np.sort(np.random.default_rng(0).permutation(len(rows))[:calibration])]
    queries = _thumbnails_of(list(pictures))
    known = _thumbnails_of([_read(corpus, r) for r in sample.itertuples()])
    best = torch.full((len(queries[0]),), -1.0)
    between = torch.full((len(known[0]),), -1.0)
    groups = sample["group"].to_numpy()
    for start in progress(range(0, len(rows), chunk), "matching the pretraining pictures", unit="blocks"):
        block = rows.iloc[start : start + chunk]
        trained = _thumbnails_of([_read(corpus, r) for r in block.itertuples()])
        best = torch.maximum(best, _either_way(queries, trained).max(dim=1).values)
        scores = _either_way(known, trained)
        scores[torch.from_numpy(groups[:, None] == block["group"].to_numpy()[None, :])] = -1.0
        between = torch.maximum(between, scores.max(dim=1).values)
    cut = max(threshold, float(between.max()) if len(between) else threshold)
    return seen | (best.numpy() > cut), cut


def _read(corpus: CorpusPictures, row) -> np.ndarray:
    return read_picture(corpus.root, row.shard, row.png_offset, row.png_size)


def _thumbnails_of(pictures: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised full-width thumbnails ``[N, 784]`` and all crops ``[N, crops, 784]`` of pictures."""
    thumbs = np.stack([thumbnails(p) for p in pictures]) if pictures else np.zeros((0, len(CROPS), THUMB**2))
    return standardised(thumbs[:, FULL]), standardised(thumbs)


def _either_way(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``[A, B]``: the best r of an ``a`` picture's full thumbnail against a ``b`` picture's crops, or
    the other way round."""
    return torch.maximum(best_over_crops(a[0], b[1]), best_over_crops(b[0], a[1]).T)


def corpus_pictures(root: str | Path, trained: pd.DataFrame) -> CorpusPictures:
    """The matching view of the corpus at ``root`` over its catalog rows ``trained`` (with their
    ``shard``, ``png_offset``, ``png_size``, ``sha256`` and ``phash``), fitted as the build fitted them."""
    root = Path(root)
    config = yaml.safe_load((root / "config.yaml").read_text())
    return CorpusPictures(
        root, trained, int(config["image_size"]), str(config["fit"]), int(config["near_duplicate_bits"])
    )
