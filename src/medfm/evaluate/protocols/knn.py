"""k-nearest-neighbour classification on cosine similarity, with DINO's temperature-weighted vote."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class KnnConfig:
    k: int = 20
    temperature: float = 0.07
    chunk: int = 1024  # test examples compared at once (bounds memory)


@torch.no_grad()
def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    outputs: int,
    multilabel: bool,
    config: KnnConfig,
) -> np.ndarray:
    """Probabilities: each of the ``k`` most similar training examples votes with weight
    ``exp(similarity / temperature)`` for its class (or its label vector, multi-label)."""
    train = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    votes = torch.as_tensor(train_y, dtype=torch.float32)
    if not multilabel:
        votes = F.one_hot(votes.long(), outputs).float()
    k = min(config.k, len(train))
    out = []
    for start in range(0, len(test_x), config.chunk):
        test = F.normalize(torch.as_tensor(test_x[start : start + config.chunk], dtype=torch.float32), dim=1)
        similarity, index = (test @ train.T).topk(k, dim=1)
        weight = (similarity / config.temperature).softmax(dim=1)  # exp(s/T), normalised per example
        out.append(torch.einsum("nk,nkc->nc", weight, votes[index]))
    return torch.cat(out).numpy()
