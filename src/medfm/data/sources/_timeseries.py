"""Helpers for the ICU time-series adapters: streaming a tar of per-patient files, gridding onto bins."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medfm.errors import DataError


def iter_tar_files(archive: Path, suffix: str, source: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, content)`` of the regular files ending in ``suffix``, in archive order.

    The archive is read as a stream, never unpacked to disk. A missing, damaged or truncated archive
    raises :class:`DataError` when iteration reaches the damage (files already yielded stay valid).
    """
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(suffix):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{source}: cannot read archive {archive}: {err}") from err


def grid_mean(
    bins: np.ndarray, features: np.ndarray, values: np.ndarray, n_bins: int, n_features: int
) -> tuple[np.ndarray, np.ndarray]:
    """Average observations into a ``[n_bins, n_features]`` grid.

    ``bins``, ``features`` and ``values`` are parallel arrays (one entry per observation, indices already
    in range). Returns the float32 grid with NaN where a cell has no observation, and the bool mask of
    observed cells.
    """
    cells = bins.astype(np.int64) * n_features + features
    size = n_bins * n_features
    counts = np.bincount(cells, minlength=size)
    sums = np.bincount(cells, weights=values, minlength=size)
    observed = counts > 0
    grid = np.full(size, np.nan, dtype=np.float32)
    grid[observed] = sums[observed] / counts[observed]
    return grid.reshape(n_bins, n_features), observed.reshape(n_bins, n_features)
