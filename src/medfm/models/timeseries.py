"""Encoders for signals and ICU series, trained from scratch: the baselines later stages improve on.

``ecg_cnn`` is a small 1D residual CNN over raw ECG leads; ``icu_gru`` is a GRU and ``icu_transformer`` a
small Transformer (FEDMEKI's clinical time-series encoder) over hourly ICU rows of values and observation
mask. Importing this module registers them in ``medfm.models.encoders.ENCODERS``::

    create_encoder("ecg_cnn")                    # 1 lead; in_chans=12 for a 12-lead ECG
    create_encoder("icu_gru", in_features=37)    # 37 variables -> inputs [B, T, 74]

``create_encoder`` passes ``in_chans`` and ``img_size`` to every encoder. ``in_chans`` is the number of
leads for the CNN and must be 1 for the ICU encoders; ``img_size`` (the length a model is built for, only a
default listed with the encoders) is not used by any of them: they take any length (the Transformer up to
its ``max_hours``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medfm.errors import ConfigError
from medfm.models.encoders import register_encoder


class ResidualBlock1d(nn.Module):
    """Two convolutions (the first strided) with batch norm, and a 1x1 projection on the shortcut when
    the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, 1, padding, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm1d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ECGResNet1d(nn.Module):
    """``forward(x [B, leads, T]) -> [B, embed_dim]``: a strided stem, residual stages that halve the
    length, global average pooling.

    The defaults (widths 16-128, kernel 7) have about 240k parameters and a total stride of 32: at 300 Hz
    a feature step is about 0.1 s, a few per heartbeat.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        kernel_size: int = 7,
        stem_kernel_size: int = 15,
        in_chans: int = 1,
        img_size: Any = None,
    ):
        super().__init__()
        if in_chans < 1:
            raise ConfigError(f"ecg_cnn needs at least one lead, got in_chans={in_chans}")
        self.in_chans = in_chans
        self.embed_dim = widths[-1]
        self.stem = nn.Sequential(
            nn.Conv1d(in_chans, widths[0], stem_kernel_size, 2, stem_kernel_size // 2, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            *(
                ResidualBlock1d(c_in, c_out, kernel_size, stride=2)
                for c_in, c_out in zip((widths[0], *widths[:-1]), widths)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=-1)


def check_series_encoder(name: str, in_features: int | None, in_chans: int) -> None:
    if in_features is None or in_features < 1:
        raise ConfigError(
            f"{name} needs the number of series variables, e.g. create_encoder({name!r}, "
            f"in_features=37); got in_features={in_features}"
        )
    if in_chans != 1:
        raise ConfigError(f"{name} takes no channels (in_chans must be 1, got {in_chans})")


def check_series_width(name: str, in_features: int, x: torch.Tensor) -> None:
    if x.shape[-1] != 2 * in_features:
        raise ConfigError(
            f"{name} built for {in_features} variables expects {2 * in_features} inputs per "
            f"hour (values and mask), got {x.shape[-1]}"
        )


class ICUGRU(nn.Module):
    """``forward(x [B, T, 2 * in_features]) -> [B, hidden_size]``: a GRU over hourly rows, each the
    ``in_features`` normalised values followed by their ``in_features`` observation flags; the feature is
    the top layer's last hidden state."""

    def __init__(
        self,
        in_features: int | None = None,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        in_chans: int = 1,
        img_size: Any = None,
    ):
        super().__init__()
        check_series_encoder("icu_gru", in_features, in_chans)
        self.in_features = in_features
        self.embed_dim = hidden_size
        self.gru = nn.GRU(2 * in_features, hidden_size, num_layers, batch_first=True, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_series_width("icu_gru", self.in_features, x)
        _, hidden = self.gru(x)
        return hidden[-1]


class ICUTransformer(nn.Module):
    """``forward(x [B, T, 2 * in_features]) -> [B, embed_dim]``: hourly rows (values, then observation
    flags) projected to ``embed_dim``, a learned position per hour, pre-norm Transformer layers, and the
    mean over hours. About 90k parameters at the defaults (37 variables): the size FEDMEKI gives its clinical
    time-series encoder, small enough to train on every client's CPU."""

    def __init__(
        self,
        in_features: int | None = None,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        max_hours: int = 256,
        dropout: float = 0.1,
        in_chans: int = 1,
        img_size: Any = None,
    ):
        super().__init__()
        check_series_encoder("icu_transformer", in_features, in_chans)
        self.in_features = in_features
        self.embed_dim = embed_dim
        self.max_hours = max_hours
        self.embed = nn.Linear(2 * in_features, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_hours, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, 2 * embed_dim, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_series_width("icu_transformer", self.in_features, x)
        if x.shape[1] > self.max_hours:
            raise ConfigError(f"icu_transformer takes at most {self.max_hours} hours, got {x.shape[1]}")
        tokens = self.embed(x) + self.pos_embed[:, : x.shape[1]]
        return self.norm(self.blocks(tokens).mean(dim=1))


register_encoder("ecg_cnn", ECGResNet1d, img_size=9000)
register_encoder("icu_gru", ICUGRU, img_size=48)
register_encoder("icu_transformer", ICUTransformer, img_size=48)
