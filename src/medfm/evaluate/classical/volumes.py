"""Volume baseline: crop geometry and intensity statistics, logistic regression.

Cropped datasets (MSD hippocampus) cut each volume around its structure, so the crop's size can give
away labels about that structure; this baseline measures how much, with no image content beyond a few
intensity statistics.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medfm.evaluate.classical.base import CLASSICAL, Classical
from medfm.evaluate.tasks.base import TaskData

INTENSITY_PERCENTILES = (10, 50, 90)


def shape_features(data: TaskData) -> np.ndarray:
    """Per volume ``[C, D, H, W]``: D, H, W, voxel count; with ``inputs["spacing"]`` (mm along D, H, W)
    also the extent in mm per axis and the crop volume in mm³; then mean, std and percentiles of the
    intensities (all channels together)."""
    spacings = data.inputs.get("spacing")
    rows = []
    for i, volume in enumerate(data.inputs["volume"]):
        volume = np.asarray(volume)
        shape = np.array(volume.shape[-3:], dtype=np.float64)
        geometry = [*shape, shape.prod()]
        if spacings is not None:
            extent = shape * np.asarray(spacings[i], dtype=np.float64)
            geometry += [*extent, extent.prod()]
        values = volume.astype(np.float64, copy=False).ravel()
        intensity = [values.mean(), values.std(), *np.percentile(values, INTENSITY_PERCENTILES)]
        rows.append(geometry + intensity)
    return np.array(rows, dtype=np.float64)


def scaled_logreg(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


CLASSICAL.register(
    "volume_shape_logreg",
    Classical(
        features=shape_features,
        estimator=scaled_logreg,
        description="Logistic regression on crop size (voxels, mm) and intensity statistics",
    ),
)
