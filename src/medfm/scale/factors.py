"""Dataset factors that BioVFM correlates with the scaling slope of each task.

Four of BioVFM's factors: the number of classes, the number of training samples, the gzip
compressibility of the images (a measure of their complexity) and the Davies-Bouldin index of the
classes (how well they separate). The last two are computed on pixels, from grey pictures resized to
the evaluation size, so they are properties of the dataset and not of any encoder.
"""

from __future__ import annotations

import gzip

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import davies_bouldin_score

from medfm.evaluate.tasks.base import TaskData

PICTURE_INPUTS = {"image": "image", "vqa": "image", "volume": "volume"}  # task kind -> input holding pictures


def dataset_factors(data: TaskData, *, size: int = 32, max_examples: int = 1000, seed: int = 0) -> dict:
    """The ``factors`` row of one task: task, n_classes, n_train, gzip_ratio, davies_bouldin.

    The pixel factors use a seeded sample of at most ``max_examples`` training examples, each a grey
    ``size`` x ``size`` uint8 picture (the middle slice of a volume). ``gzip_ratio`` is the mean
    compressed-to-raw size (lower: more compressible); ``davies_bouldin`` clusters the pixel vectors by
    class, or by label combination for multi-label tasks (NaN when the clusters are not at least two and
    fewer than the pictures).
    """
    kind = data.info.kind
    if kind not in PICTURE_INPUTS:
        raise ValueError(f"task {data.name}: dataset factors need pictures; kind {kind!r} has none")
    train = np.flatnonzero(data.split == "train")
    if len(train) == 0:
        raise ValueError(f"task {data.name}: no training examples")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train, size=min(max_examples, len(train)), replace=False))
    pictures = np.stack([grey_picture(data.inputs[PICTURE_INPUTS[kind]][i], size) for i in chosen])

    ratios = [len(gzip.compress(p.tobytes(), compresslevel=9)) / p.nbytes for p in pictures]
    labels = data.y[chosen]
    if data.info.multilabel:
        labels = np.unique(labels.astype(bool), axis=0, return_inverse=True)[1].reshape(-1)
    clusters = len(np.unique(labels))
    davies_bouldin = float("nan")
    if 2 <= clusters < len(labels):
        davies_bouldin = float(davies_bouldin_score(pictures.reshape(len(pictures), -1) / 255.0, labels))
    return {
        "task": data.name,
        "n_classes": len(data.classes),
        "n_train": len(train),
        "gzip_ratio": float(np.mean(ratios)),
        "davies_bouldin": davies_bouldin,
    }


def grey_picture(picture, size: int) -> np.ndarray:
    """One image ``[C, H, W]`` or volume ``[C, D, H, W]`` (its middle slice) as a grey uint8 ``[size, size]``.

    uint8 pictures keep their scale; float pictures in [0, 1] are multiplied by 255, others are min-max
    scaled to [0, 255].
    """
    # np.array copies: pictures read from files (PIL, memory maps) may be read-only
    picture = picture.cpu() if torch.is_tensor(picture) else torch.from_numpy(np.array(picture))
    if picture.ndim == 4:
        picture = picture[:, picture.shape[1] // 2]
    grey = picture.float().mean(dim=0)
    shrink = grey.shape[0] >= size and grey.shape[1] >= size
    grey = F.interpolate(grey[None, None], size=(size, size), mode="area" if shrink else "bilinear")[0, 0]
    if picture.dtype != torch.uint8:
        if picture.min() < 0 or picture.max() > 1:
            grey = (grey - grey.min()) / (grey.max() - grey.min()).clamp_min(1e-12)
        grey = grey * 255
    return grey.round().clamp(0, 255).to(torch.uint8).numpy()
