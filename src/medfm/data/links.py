"""Derived images linked to their originals by content, so that a patient is one subject across datasets.

A derived dataset resamples another under new names and sizes (PneumoniaMNIST is a 28 px centre crop of
the paediatric X-rays), so keys alone cannot tell that two images show the same patient; a perceptual hash
cannot either (a 28 px crop and its 224 px original differ by about 116 of 256 pHash bits). The link is a
thumbnail match: every picture becomes a 28 x 28 grey thumbnail of its full width and of centred crops of
40-95 % of its width (full height: the derived set crops the short side of originals that were stretched
to a square), each standardised to zero mean and unit norm. A derived picture's full thumbnail is then
correlated (Pearson r) with every crop of every original; it is linked to the original with the highest r
when r reaches the threshold.

Calibration (:func:`false_links`): the originals' own 70 % crops stand in for derived pictures whose
patient is known, and the best r against *other* patients' pictures counts the links the threshold would
make between different patients. In the reference all-image-sources corpus (128 px), r >= 0.96 linked
4,861 of 5,002 PneumoniaMNIST pictures to a paediatric X-ray (labels agreeing in all of them), and none of
5,808 originals' crops reached it against another patient's picture (highest r 0.954).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

THUMB = 28  # side of a thumbnail: PneumoniaMNIST's own size
CROPS = (*(round(0.40 + 0.05 * i, 2) for i in range(12)), 1.0)  # centred width fractions
FULL = CROPS.index(1.0)
CALIBRATION_CROP = CROPS.index(0.7)  # the crop the derived set most often matches
DEFAULT_THRESHOLD = 0.96


def thumbnails(picture: np.ndarray) -> np.ndarray:
    """uint8 ``[len(CROPS), 28 * 28]``: grey thumbnails of the picture's centred width crops.

    ``picture`` is ``[C, H, W]`` (uint8, or float in [0, 1]); channels are averaged."""
    grey = torch.as_tensor(np.asarray(picture, dtype=np.float32)).mean(dim=0)
    if grey.max() <= 1.0:
        grey = grey * 255.0
    width = grey.shape[1]
    # area resampling averages rectangles, so it splits into rows (once) and then each crop's columns
    rows = F.adaptive_avg_pool2d(grey[None, None], (THUMB, width))[0]  # [1, 28, W]
    out = []
    for fraction in CROPS:
        keep = max(1, round(width * fraction))
        start = (width - keep) // 2
        out.append(F.adaptive_avg_pool1d(rows[0, :, start : start + keep], THUMB).reshape(-1))
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8).numpy()


def standardised(thumbs: np.ndarray) -> torch.Tensor:
    """Thumbnails ``[..., 784]`` as float32 with zero mean and unit norm (so a dot product is Pearson r)."""
    x = torch.as_tensor(np.asarray(thumbs), dtype=torch.float32)
    x = x - x.mean(dim=-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def best_over_crops(queries: torch.Tensor, originals: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """``[Q, N]``: for each query thumbnail ``[Q, 784]``, the best r over the crops of each original
    ``[N, crops, 784]`` (computed a crop and a block of queries at a time, so memory stays small)."""
    out = torch.full((len(queries), len(originals)), -1.0)
    for start in range(0, len(queries), chunk):
        block, best = queries[start : start + chunk], out[start : start + chunk]
        for crop in range(originals.shape[1]):
            torch.maximum(best, block @ originals[:, crop].T, out=best)
    return out


@dataclass
class Links:
    """For each derived picture: the best original (index), its r, and whether a picture of *another*
    subject than that original's also reached the threshold (an ambiguous link)."""

    original: np.ndarray  # index into the originals, -1 when not linked
    r: np.ndarray
    ambiguous: np.ndarray

    @property
    def linked(self) -> np.ndarray:
        return self.original >= 0


def link(
    derived: np.ndarray, originals: np.ndarray, subjects: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> Links:
    """Link derived pictures (thumbnails ``[D, crops, 784]``, their full width used) to originals
    (``[N, crops, 784]``, every crop), whose subjects are ``subjects`` ``[N]``."""
    if len(derived) == 0 or len(originals) == 0:
        empty = np.zeros(len(derived))
        return Links(np.full(len(derived), -1), empty, empty.astype(bool))
    scores = best_over_crops(standardised(derived[:, FULL]), standardised(originals))
    r, best = scores.max(dim=1)
    subjects = np.asarray(subjects).astype(str)
    other = torch.from_numpy(subjects[None, :] != subjects[best.numpy()][:, None])
    runner_up = torch.where(other, scores, torch.tensor(-1.0)).max(dim=1).values
    r, best, runner_up = r.numpy(), best.numpy(), runner_up.numpy()
    linked = r >= threshold
    return Links(np.where(linked, best, -1), r, linked & (runner_up >= threshold))


def false_links(originals: np.ndarray, subjects: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Links the threshold would make between different patients: each original's 70 % crop (a stand-in
    for a derived picture of a known patient) against every other subject's pictures."""
    subjects = np.asarray(subjects).astype(str)
    if len(originals) == 0:
        return {"pictures_checked": 0, "false_links": 0, "highest_r": float("nan")}
    scores = best_over_crops(standardised(originals[:, CALIBRATION_CROP]), standardised(originals))
    scores[torch.from_numpy(subjects[:, None] == subjects[None, :])] = -1.0
    best = scores.max(dim=1).values.numpy()
    return {
        "pictures_checked": len(originals),
        "false_links": int((best >= threshold).sum()),
        "highest_r": float(best.max()),
    }
