"""Backbones for signal and ICU-series tasks (see :class:`medfm.evaluate.backbones.Backbone`).

:func:`timeseries_backbone` builds a task's registered encoder (random weights) sized for its data and
wraps it.
``SignalBackbone`` feeds an ECG encoder fixed-length, per-record standardised windows. ``SeriesBackbone``
feeds a recurrent ICU encoder hourly rows of standardised values, carried forward when missing, beside
the observation mask. The ``static`` input of ICU tasks is not used: the encoders see the series only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

import medfm.models.timeseries  # noqa: F401  (registers ecg_cnn and icu_gru)
from medfm.errors import ConfigError
from medfm.evaluate.backbones import Backbone
from medfm.evaluate.tasks.base import TaskData
from medfm.models.encoders import create_encoder

# Standardised values are clipped: a few implausible recordings (e.g. a temperature of -17.8) would
# otherwise reach hundreds of standard deviations and dominate the recurrent state.
SERIES_CLIP = 10.0


def timeseries_backbone(encoder: str | None, data: TaskData) -> Backbone:
    """``encoder`` (a registered name) built for the task's leads or series variables, randomly
    initialised, in the backbone of the task's input kind."""
    if not encoder:
        raise ConfigError(f"task {data.name} names no encoder for its {data.info.kind} inputs")
    if data.info.kind == "signal":
        leads = np.asarray(data.inputs["signal"][0]).shape[0]
        return SignalBackbone(create_encoder(encoder, in_chans=leads))
    if data.info.kind == "series":
        variables = np.asarray(data.inputs["series"][0]).shape[1]
        return SeriesBackbone(create_encoder(encoder, in_features=variables))
    raise ConfigError(f"task {data.name} has {data.info.kind} inputs, not signals or ICU series")


class SignalBackbone(Backbone):
    """An encoder ``[B, leads, T] -> [B, embed_dim]`` over signals ``[leads, T]``.

    Each lead is standardised over its whole record (NaN samples ignored, then set to 0), and the record
    is centre-cropped or zero-padded on both sides to ``length`` samples (default 30 s at 300 Hz).
    """

    def __init__(self, encoder: nn.Module | None, length: int = 9000):
        super().__init__()
        if length < 1:
            raise ConfigError(f"signal length must be at least one sample, got {length}")
        self.encoder = encoder  # None: preprocessing only (collate), for models that tokenise signals
        self.length = length
        self.embed_dim = int(encoder.embed_dim) if encoder is not None else 0

    def preprocess(self, signal: Any) -> torch.Tensor:
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 2:
            raise ConfigError(f"expected a signal [leads, T], got shape {x.shape}")
        mean = np.nanmean(x, axis=1, keepdims=True)
        std = np.nanstd(x, axis=1, keepdims=True)
        x = np.nan_to_num((x - mean) / np.maximum(np.nan_to_num(std), 1e-6))
        return torch.from_numpy(fit_length(x, self.length))

    def collate(self, inputs, index):
        return {"signal": torch.stack([self.preprocess(inputs["signal"][i]) for i in index])}

    def forward(self, batch):
        return self.encoder(batch["signal"])


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """The centre ``length`` samples of ``x [leads, T]``, or ``x`` zero-padded evenly on both sides."""
    size = x.shape[1]
    if size >= length:
        start = (size - length) // 2
        return np.ascontiguousarray(x[:, start : start + length])
    out = np.zeros((x.shape[0], length), dtype=x.dtype)
    start = (length - size) // 2
    out[:, start : start + size] = x
    return out


class SeriesBackbone(Backbone):
    """An encoder ``[B, T, 2F] -> [B, embed_dim]`` over ICU series ``[T, F]`` with their mask.

    :meth:`fit` learns each variable's mean and standard deviation over the observed training values (a
    variable never observed, or constant, gets 0 and 1). :meth:`collate` standardises (clipped at
    ``SERIES_CLIP``), carries each variable's last observation forward within the example's window, fills
    what was never observed with 0 (the mean) and appends the mask: ``[values, mask]`` per hour.
    """

    def __init__(self, encoder: nn.Module | None):
        super().__init__()
        self.encoder = encoder  # None: preprocessing only (fit, collate), for models that tokenise series
        self.embed_dim = int(encoder.embed_dim) if encoder is not None else 0
        # Plain CPU tensors, not buffers: collate runs on CPU whatever device the encoder is on.
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def fit(self, train_inputs: dict[str, list[Any]]) -> None:
        # All training hours as rows [sum of T, F]: examples may differ in length.
        series = np.concatenate([np.asarray(s, dtype=np.float32) for s in train_inputs["series"]])
        masks = np.concatenate([np.asarray(m, dtype=bool) for m in train_inputs["mask"]])
        count = np.maximum(masks.sum(axis=0), 1)
        mean = np.where(masks, series, 0).sum(axis=0, dtype=np.float64) / count
        deviation = np.where(masks, series - mean.astype(np.float32), 0)
        std = np.sqrt(np.square(deviation).sum(axis=0, dtype=np.float64) / count)
        std[std == 0] = 1.0  # never observed (mean 0) or constant
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)

    def collate(self, inputs, index):
        if self.mean is None or self.std is None:
            raise ConfigError("SeriesBackbone.collate needs fit(train_inputs) first (it learns the scaling)")
        series = torch.stack([torch.as_tensor(np.asarray(inputs["series"][i])) for i in index]).float()
        mask = torch.stack([torch.as_tensor(np.asarray(inputs["mask"][i])) for i in index]).bool()
        if series.shape[-1] != len(self.mean):
            raise ConfigError(
                f"series have {series.shape[-1]} variables, the scaling was fit on {len(self.mean)}"
            )
        values = ((series - self.mean) / self.std).clamp(-SERIES_CLIP, SERIES_CLIP)
        values = carry_forward(torch.where(mask, values, torch.zeros(())), mask)
        return {"series": torch.cat([values, mask.float()], dim=-1)}

    def forward(self, batch):
        return self.encoder(batch["series"])


def carry_forward(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values [B, T, F]`` with each unobserved cell set to the last observed one before it along T, or
    0 where the variable was not yet observed."""
    steps = torch.arange(values.shape[1]).view(1, -1, 1)
    last = torch.where(mask, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    filled = values.gather(1, last.clamp(min=0))
    return torch.where(last >= 0, filled, torch.zeros(()))
