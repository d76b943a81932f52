"""Reading image files into channel-first uint8 arrays, forcing a full decode so damage is caught here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Failures a damaged or non-image file raises inside Pillow; callers turn them into skips.
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image(path: str | Path, *, max_size: int | None = None, grayscale: str = "auto") -> np.ndarray:
    """Decode ``path`` to uint8 ``[C, H, W]`` (C = 1 or 3).

    ``max_size`` bounds the longer side: JPEGs are decoded at a reduced scale first (fast for large
    photographs), then resized with a Lanczos filter. ``grayscale``: ``"auto"`` returns one channel when
    the three colour channels are identical (X-rays stored as RGB), ``"always"`` converts to luminance,
    ``"never"`` keeps colour. Raises one of ``IMAGE_ERRORS`` for a truncated or unreadable file.
    """
    with Image.open(path) as img:
        if max_size is not None and max(img.size) > max_size and img.format == "JPEG":
            # Ask for the target size itself: the decoder then picks the largest 1/2, 1/4 or 1/8 scale
            # that still covers it (a square request would keep non-square photographs too large).
            scale = max_size / max(img.size)
            img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img.load()  # decode now: a truncated file raises here rather than later in a worker
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
        if grayscale == "always" and img.mode != "L":
            img = img.convert("L")
        if max_size is not None and max(img.size) > max_size:
            scale = max_size / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.LANCZOS)
        array = np.asarray(img)
    if array.ndim == 2:
        return array[None].copy()
    array = np.ascontiguousarray(array.transpose(2, 0, 1))
    if grayscale == "auto" and _is_gray(array):
        return array[:1].copy()
    return array


def _is_gray(rgb: np.ndarray, tolerance: int = 2) -> bool:
    """True when the colour channels agree up to JPEG rounding (a grey image saved as RGB)."""
    wide = rgb.astype(np.int16)
    return bool(np.abs(wide[0] - wide[1]).max() <= tolerance and np.abs(wide[0] - wide[2]).max() <= tolerance)
