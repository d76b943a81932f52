"""A task as tensors: every example's model inputs after its backbone's preprocessing, for stages that keep
whole splits in memory and train on them many times (federated clients, continual-learning streams).

Images come out resized and normalised, ECGs standardised and cropped, ICU series standardised, carried
forward and masked (see :mod:`medfm.evaluate.backbones`); VQA questions as hashed word ids.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from medfm.evaluate.backbones import Backbone
from medfm.evaluate.tasks import TaskData
from medfm.evaluate.tasks.vqa import normalise_text
from medfm.log import progress

QUESTION_VOCAB = 4096  # hashed question tokens (unigrams and bigrams); 0 pads
QUESTION_TOKENS = 32


@dataclass
class Split:
    """One split of one task held in memory: model inputs, labels, subjects (one entry per example)."""

    inputs: dict[str, torch.Tensor]
    y: torch.Tensor
    subjects: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def question_tokens(question: str) -> list[int]:
    """Hashed unigrams and bigrams of the normalised question (a stable hash: Python's is salted)."""
    words = normalise_text(question).split()
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    ids = [
        1 + int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest()) % (QUESTION_VOCAB - 1)
        for g in grams
    ]
    ids = ids[:QUESTION_TOKENS]
    return ids + [0] * (QUESTION_TOKENS - len(ids))


def model_inputs(
    backbone: Backbone, data: TaskData, description: str, chunk: int = 256
) -> dict[str, torch.Tensor]:
    """Every example's preprocessed inputs, collated in chunks (bounded memory) and concatenated."""
    parts: dict[str, list[torch.Tensor]] = {}
    starts = range(0, len(data), chunk)
    for start in progress(starts, description, unit="chunks"):
        batch = backbone.collate(data.inputs, range(start, min(start + chunk, len(data))))
        for key, value in batch.items():
            parts.setdefault(key, []).append(value.float().contiguous())
    inputs = {key: torch.cat(values) for key, values in parts.items()}
    if data.info.kind == "vqa":
        inputs["question"] = torch.tensor(
            [question_tokens(q) for q in data.inputs["question"]], dtype=torch.long
        )
    return inputs
