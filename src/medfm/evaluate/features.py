"""Frozen features: a backbone run once over a task's examples, without gradients, in batches.

Identical inputs are encoded once: the two pneumonia tasks share their images, and VQA-RAD asks many
questions about each image. A cache maps a digest of an example's arrays to its feature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medfm.evaluate.backbones import Backbone
from medfm.evaluate.tasks.base import inputs_digest
from medfm.log import progress


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    inputs: dict[str, list[Any]],
    *,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    description: str = "features",
    cache: dict[bytes, np.ndarray] | None = None,
) -> np.ndarray:
    """Features ``[N, embed_dim]`` (float32) of every example in ``inputs``, in order.

    ``cache`` (digest -> feature) is read and filled; pass one per backbone, never share it between two.
    """
    count = len(next(iter(inputs.values())))
    cache = {} if cache is None else cache
    keys = [inputs_digest({k: v[i] for k, v in inputs.items()}, text=False) for i in range(count)]
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        if key not in cache:
            first.setdefault(key, i)
    todo = sorted(first.values())
    backbone.eval().to(device)
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    for index in progress(batches, description, unit="examples", scale=batch_size):
        batch = {k: v.to(device, non_blocking=True) for k, v in backbone.collate(inputs, index).items()}
        for i, feature in zip(index, backbone(batch).float().cpu().numpy()):
            cache[keys[i]] = feature
    if not count:
        return np.zeros((0, backbone.embed_dim), np.float32)
    return np.stack([cache[key] for key in keys]).astype(np.float32)
