"""A toy regression task for engine tests: samples drawn from per-sample generators, a linear model."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from medfm.engine.data import sample_generator

TRUE_WEIGHT = torch.arange(1.0, 9.0)


class ToyData(Dataset):
    def __init__(self, size: int = 64):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        x = torch.randn(8, generator=sample_generator(seed))
        return {"x": x, "y": (x * TRUE_WEIGHT).sum(0, keepdim=True), "index": torch.tensor(index)}


class ToyModel(nn.Module):
    """Linear model with dropout, so the global generator matters to the loss (as MAE's masks do)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)
        self.dropout = nn.Dropout(0.01)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = self.linear(self.dropout(batch["x"]))
        return {"loss": ((pred - batch["y"]) ** 2).mean()}
