"""De-duplication: exact (same pixels) and near (perceptual hashes within a Hamming distance).

Perceptual hashes are 256-bit DCT hashes from ``imagehash`` (16 x 16): 64-bit hashes put different
patients' chest X-rays within a few bits of each other. Near duplicates are found greedily in a fixed
order: an image is dropped when it lies within ``max_bits`` of an image already *kept*, so chains of
slightly different images (A~B, B~C) never make A stand for C. Candidates come from the pigeonhole trick:
split each hash into ``max_bits + 1`` bands; two hashes within ``max_bits`` agree exactly on at least one.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict

import imagehash
import numpy as np
from PIL import Image

HASH_SIDE = 16
HASH_BITS = HASH_SIDE * HASH_SIDE


def pixel_digest(image: np.ndarray) -> str:
    """Exact identity of a uint8 image: SHA-256 over shape and bytes."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def perceptual_hash(image: np.ndarray) -> int:
    """256-bit DCT perceptual hash (``imagehash.phash``, 16 x 16) of a ``[C, H, W]`` uint8 image."""
    plane = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    bits = imagehash.phash(Image.fromarray(plane), hash_size=HASH_SIDE).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _bands(max_bits: int) -> list[tuple[int, int]]:
    """(shift, mask) of ``max_bits + 1`` bands: two hashes within ``max_bits`` bits agree on one band."""
    bounds = [int(b) for b in np.linspace(0, HASH_BITS, max_bits + 2)]
    return [(lo, (1 << (hi - lo)) - 1) for lo, hi in itertools.pairwise(bounds)]


def near_duplicate_of(hashes: list[int], max_bits: int) -> list[int]:
    """For each hash, the index of the earlier kept hash it duplicates, or its own index if it is kept."""
    result = list(range(len(hashes)))
    if max_bits < 0:
        return result
    bands = _bands(max_bits)
    buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in bands]
    for index, value in enumerate(hashes):
        keys = [(value >> lo) & mask for lo, mask in bands]
        match = next(
            (
                kept
                for bucket, key in zip(buckets, keys)
                for kept in bucket.get(key, ())
                if (hashes[kept] ^ value).bit_count() <= max_bits
            ),
            None,
        )
        if match is None:
            for bucket, key in zip(buckets, keys):
                bucket[key].append(index)
        else:
            result[index] = match
    return result


def near_any(references: list[int], queries: list[int], max_bits: int) -> np.ndarray:
    """bool per query: whether any reference hash is within ``max_bits`` bits of it (queries are never
    references of one another, so one query cannot stand between another and its match)."""
    bands = _bands(max_bits)
    buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in bands]
    for value in references:
        for (lo, mask), bucket in zip(bands, buckets):
            bucket[(value >> lo) & mask].append(value)
    return np.array(
        [
            any(
                (kept ^ value).bit_count() <= max_bits
                for (lo, mask), bucket in zip(bands, buckets)
                for kept in bucket.get((value >> lo) & mask, ())
            )
            for value in queries
        ],
        dtype=bool,
    )
