"""Intensity handling for medical images: CT windows in Hounsfield units and MR percentile scaling.

Each function maps raw intensities to float32 in [0, 1]; NaN and infinities are rejected by the caller
(see :func:`require_finite`), because a silently clipped NaN would become a black image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfm.errors import ConfigError

# (centre, width) in Hounsfield units; the usual radiology presets.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (32.0, 8.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
}


def ct_window_option(value: str | Sequence[float], owner: str) -> tuple[float, float]:
    """A CT window option, a preset name or ``[centre, width]`` in HU, as ``(centre, width)``.

    Raises :class:`ConfigError` naming ``owner`` for an unknown preset or a malformed pair, so a bad option
    fails when the source is opened rather than on every volume.
    """
    if isinstance(value, str):
        if value not in CT_WINDOWS:
            raise ConfigError(f"{owner}: unknown CT window {value!r}; known: {', '.join(CT_WINDOWS)}")
        return CT_WINDOWS[value]
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[1] <= 0:
        raise ConfigError(f"{owner}: a CT window is [centre, width] with width > 0, got {list(value)}")
    return pair[0], pair[1]


def window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window: ``centre - width/2`` maps to 0 and ``centre + width/2`` to 1, clipped."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = centre - width / 2.0
    return np.clip((values.astype(np.float32) - low) / width, 0.0, 1.0)


def ct_window(hounsfield: np.ndarray, preset: str | tuple[float, float]) -> np.ndarray:
    """Apply a named CT window (see ``CT_WINDOWS``) or an explicit ``(centre, width)``."""
    if isinstance(preset, str):
        if preset not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {preset!r}; known: {', '.join(CT_WINDOWS)}")
        preset = CT_WINDOWS[preset]
    return window(hounsfield, *preset)


def percentile_scale(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale so the ``low``/``high`` percentiles map to 0/1 (MR and other arbitrary-unit images).

    The percentiles are taken over the whole array (a whole volume, not slice by slice) so slices of one
    scan stay comparable. A constant array maps to zeros.
    """
    values = values.astype(np.float32)
    lo, hi = (np.float32(v) for v in np.percentile(values, [low, high]))
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)


def require_finite(values: np.ndarray) -> str | None:
    """``None`` if every value is finite, else a short description usable as a skip detail."""
    finite = np.isfinite(values)
    if finite.all():
        return None
    bad = finite.size - int(finite.sum())
    return f"{bad} of {finite.size} values are NaN or infinite"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as is; floats are taken to be in [0, 1] and rounded to 0..255."""
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"expected uint8 or float image, got {image.dtype}")
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
