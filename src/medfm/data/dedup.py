"""De-duplication: exact (same pixels) and near (perceptual hashes within a Hamming distance).

Perceptual hashes come from ``imagehash``. Comparing every pair is quadratic, so near duplicates are found
with the pigeonhole trick: split each 64-bit hash into ``max_bits + 1`` bands; two hashes within
``max_bits`` differing bits agree exactly on at least one band, so only hashes sharing a band are compared.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import imagehash
import numpy as np
from PIL import Image


def pixel_digest(image: np.ndarray) -> str:
    """Exact identity of a uint8 image: SHA-256 over shape and bytes."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (``imagehash.phash``) of a ``[C, H, W]`` uint8 image, as an int."""
    plane = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    bits = imagehash.phash(Image.fromarray(plane)).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def near_duplicate_groups(hashes: list[int], max_bits: int) -> list[int]:
    """For each hash, the index of the first hash of its near-duplicate group (itself if unique).

    Groups are connected components of the "within ``max_bits``" relation, so the representative kept is
    the earliest member: the result depends only on the order of ``hashes``, which the caller fixes.
    """
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    if max_bits < 0:
        return parent
    bounds = [int(b) for b in np.linspace(0, 64, max_bits + 2)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mask = (1 << (hi - lo)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for index, value in enumerate(hashes):
            buckets[(value >> lo) & mask].append(index)
        for members in buckets.values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1 :]:
                    if find(a) != find(b) and bin(hashes[a] ^ hashes[b]).count("1") <= max_bits:
                        union(a, b)
    return [find(i) for i in range(len(hashes))]
