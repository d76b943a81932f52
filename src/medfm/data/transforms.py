"""Turning any image sample into 2D uint8 pictures of one target size, as a pretraining corpus stores them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from medfm.data.intensity import to_uint8

FIT_MODES = ("pad", "resize", "crop")


def volume_slices(
    volume: np.ndarray,
    axes: Sequence[str | int],
    axis_names: Sequence[str] | None = None,
    *,
    step: int = 1,
    min_foreground: float = 0.0,
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(axis_name, index, slice [C, H, W])`` from a ``[C, D, H, W]`` volume.

    ``axes`` name the spatial axes to slice along, either by the names in ``axis_names`` (for example
    ``"axial"``) or by position 0, 1, 2 (= D, H, W). Slices whose fraction of non-zero pixels (after the
    volume's own intensity scaling) is below ``min_foreground`` are left out: they are air around the head,
    not anatomy.
    """
    if volume.ndim != 4:
        raise ValueError(f"expected a [C, D, H, W] volume, got shape {volume.shape}")
    names = list(axis_names or ("d", "h", "w"))
    for axis in axes:
        position = axis if isinstance(axis, int) else _axis_position(axis, names)
        moved = np.moveaxis(volume, position + 1, 1)  # [C, N, ...]
        for index in range(0, moved.shape[1], step):
            plane = moved[:, index]
            if min_foreground > 0 and np.count_nonzero(plane.max(axis=0)) < min_foreground * plane[0].size:
                continue
            yield names[position], index, np.ascontiguousarray(plane)


def _axis_position(axis: str, names: list[str]) -> int:
    if axis in names:
        return names.index(axis)
    raise ValueError(f"cannot slice along {axis!r}: this volume's axes are {names}")


def fit_to_size(image: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """Make a ``[C, H, W]`` image ``size`` x ``size`` uint8.

    ``pad``: scale the longer side to ``size`` (aspect kept), then pad with zeros, centred;
    ``resize``: stretch to the square; ``crop``: scale the shorter side to ``size``, then centre-crop.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"unknown fit mode {mode!r}; choose one of {FIT_MODES}")
    image = to_uint8(image)
    channels, height, width = image.shape
    if mode == "resize":
        return _resize(image, size, size)
    scale = (min if mode == "pad" else max)(size / height, size / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = _resize(image, new_h, new_w)
    if mode == "crop":
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return np.ascontiguousarray(resized[:, top : top + size, left : left + size])
    out = np.zeros((channels, size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[:, top : top + new_h, left : left + new_w] = resized
    return out


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[1:] == (height, width):
        return image
    # Antialiased downscaling (Lanczos) keeps fine structure; bicubic is the usual choice for upscaling.
    shrinking = height * width < image.shape[1] * image.shape[2]
    method = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
    planes = [np.asarray(Image.fromarray(plane).resize((width, height), method)) for plane in image]
    return np.stack(planes)


def physical_aspect(plane: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Resample a ``[C, H, W]`` uint8 plane to square pixels, given its (row, column) spacing in mm."""
    row_mm, col_mm = (float(v) for v in spacing)
    if row_mm <= 0 or col_mm <= 0 or abs(row_mm - col_mm) < 1e-3 * max(row_mm, col_mm):
        return plane
    finest = min(row_mm, col_mm)
    height = max(1, round(plane.shape[1] * row_mm / finest))
    width = max(1, round(plane.shape[2] * col_mm / finest))
    return _resize(plane, height, width)


def pictures(
    sample: dict[str, Any],
    axes: Sequence[str | int],
    step: int,
    min_foreground: float,
    min_aspect: float = 0.25,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yield ``(slice_info, [C, H, W] image)`` for a sample: itself if 2D, its slices if 3D.

    Slices of a volume with ``meta["spacing"]`` are resampled to square pixels first (a 5 mm thick series
    cut coronally is 5 times taller than its pixel count says), and slices whose shorter side is below
    ``min_aspect`` times the longer one are left out: a one-slice series has no coronal view.
    """
    image = sample["image"]
    if image.ndim == 3:
        yield {}, image
        return
    if image.ndim != 4:
        raise ValueError(f"image of shape {image.shape} is neither [C, H, W] nor [C, D, H, W]")
    meta = sample["meta"]
    names = list(meta.get("axis_names") or ("d", "h", "w"))
    spacing = meta.get("spacing")
    for axis, index, plane in volume_slices(image, axes, names, step=step, min_foreground=min_foreground):
        plane = to_uint8(plane)
        if spacing is not None:
            position = names.index(axis)
            plane = physical_aspect(plane, [v for i, v in enumerate(spacing) if i != position])
        if min(plane.shape[1:]) < min_aspect * max(plane.shape[1:]):
            continue
        yield {"slice_axis": axis, "slice_index": index}, plane
