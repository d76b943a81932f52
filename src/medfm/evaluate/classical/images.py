"""Classical image baselines: logistic regression on HOG features or on downsampled pixels.

These are the floors the dataset notes report for the pneumonia X-rays (HOG) and PneumoniaMNIST (pixels);
any learned encoder should beat them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import hog
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medfm.evaluate.backbones import image_tensor
from medfm.evaluate.classical.base import CLASSICAL, Classical
from medfm.evaluate.tasks.base import TaskData


def grey(image, size: int) -> np.ndarray:
    """A grey ``[size, size]`` float image in [0, 1] (channel mean, area-resized)."""
    x = image_tensor(image).mean(dim=0, keepdim=True)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="area")[0]
    return x[0].numpy()


def hog_features(data: TaskData, size: int = 64) -> np.ndarray:
    return np.stack(
        [
            hog(grey(image, size), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))
            for image in data.inputs["image"]
        ]
    ).astype(np.float32)


def pixel_features(data: TaskData, size: int = 28) -> np.ndarray:
    with torch.no_grad():
        return np.stack([grey(image, size).ravel() for image in data.inputs["image"]]).astype(np.float32)


def logistic(seed: int, c: float = 0.01):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))


CLASSICAL.register(
    "hog_logreg",
    Classical(hog_features, logistic, "logistic regression on HOG features of the 64 px grey image"),
)
CLASSICAL.register(
    "pixels_logreg",
    Classical(pixel_features, logistic, "logistic regression on the 28 px grey pixels"),
)
