"""Backbones: an encoder as the protocols see it, raw task inputs in, one feature vector per example out.

Each input kind has its own preprocessing (:meth:`Backbone.collate`), so the protocols (linear probe, kNN,
fine-tune, few-shot) are written once for images, volumes, signals and ICU series. Image preprocessing
repeats the pretraining views' last steps: float in [0, 1], channels matched to the encoder (1 <-> 3
only), resized to ``image_size``, normalised with the bundle's mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from medfm.errors import ConfigError
from medfm.pretrain.views import as_image, match_channels


class Backbone(nn.Module):
    """Base class: ``collate`` turns examples into tensors, ``forward`` gives features ``[B, embed_dim]``.

    ``layer_id`` numbers parameters from input (0) to output (``num_layers``) for layer-wise learning-rate
    decay; backbones without layers put everything in layer 0 (no decay).
    """

    embed_dim: int
    num_layers: int = 0

    def preprocessing(self) -> str:
        """What, besides the weights, decides this backbone's features (part of feature-cache keys)."""
        return type(self).__name__

    def fit(self, train_inputs: dict[str, list[Any]]) -> None:
        """Learn preprocessing statistics from the training inputs (default: none needed)."""

    def collate(self, inputs: dict[str, list[Any]], index: Sequence[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def layer_id(self, name: str) -> int:
        return 0


def image_tensor(image: Any) -> torch.Tensor:
    """An image ``[C, H, W]`` (uint8, or float in [0, 1]; array or tensor) as float32 in [0, 1]."""
    return as_image(torch.as_tensor(np.asarray(image)))


INTENSITIES = ("encoder", "per_image")


def normalise(x: torch.Tensor, mean: float, std: float, intensity: str) -> torch.Tensor:
    """``encoder``: the statistics the encoder was pretrained with; ``per_image``: each image (or volume)
    standardised by its own mean and standard deviation, which removes scanner and exposure offsets."""
    if intensity == "per_image":
        dims = tuple(range(1, x.dim()))
        return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


def check_channels(channels: int, in_chans: int, task: str, encoder: str) -> None:
    """Fail early, naming both sides, when images cannot be fed to the encoder."""
    if channels != in_chans and {channels, in_chans} != {1, 3}:
        raise ConfigError(
            f"task {task} has {channels}-channel images but encoder {encoder} takes {in_chans} channel(s); "
            "medfm converts only between 1 (grey) and 3 (RGB) channels"
        )


class ImageBackbone(Backbone):
    """A 2D encoder whose ``forward(x)`` returns pooled features (medfm ViTs, timm models with no head)."""

    def __init__(
        self,
        encoder: nn.Module,
        image_size: int,
        mean: float = 0.5,
        std: float = 0.25,
        intensity: str = "encoder",
    ):
        super().__init__()
        self.encoder = encoder
        self.image_size = image_size
        self.mean, self.std, self.intensity = mean, std, intensity
        self.in_chans = _in_chans(encoder)
        self.embed_dim = int(getattr(encoder, "embed_dim", None) or encoder.num_features)
        blocks = getattr(encoder, "blocks", None)
        self.num_layers = len(blocks) + 1 if blocks is not None else 0

    def preprocess(self, images: list[Any]) -> torch.Tensor:
        """``[B, in_chans, size, size]`` from images ``[C, H, W]``; same-shaped images resize as one batch."""
        tensors = [image_tensor(image) for image in images]
        if len({t.shape for t in tensors}) == 1:
            return self._resize(match_channels(torch.stack(tensors), self.in_chans))
        return torch.cat([self._resize(match_channels(t, self.in_chans)[None]) for t in tensors])

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return normalise(x, self.mean, self.std, self.intensity)

    def preprocessing(self) -> str:
        return f"{type(self).__name__}:{self.image_size}:{self.mean}:{self.std}:{self.intensity}"

    def collate(self, inputs, index):
        return {"image": self.preprocess([inputs["image"][i] for i in index])}

    def forward(self, batch):
        return self.encoder(batch["image"])

    def layer_id(self, name: str) -> int:
        """ViT numbering as in BEiT and MAE fine-tuning: embeddings 0, block i -> i + 1, the rest last."""
        if not self.num_layers:
            return 0
        name = name.removeprefix("encoder.")
        if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed", "mask_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers


class SliceBackbone(ImageBackbone):
    """A 2D encoder over a volume: the mean feature of ``slices`` evenly spaced axial slices.

    Volumes are ``[C, D, H, W]`` with D axial (medfm's NIfTI reader reorients to RAS); slices are taken
    from the middle 60 % of the depth, where the anatomy is.
    """

    def __init__(
        self, encoder: nn.Module, image_size: int, mean=0.5, std=0.25, intensity="encoder", slices: int = 8
    ):
        super().__init__(encoder, image_size, mean, std, intensity)
        self.slices = slices

    def preprocessing(self) -> str:
        return f"{super().preprocessing()}:{self.slices}"

    def collate(self, inputs, index):
        stacks = []
        for i in index:
            volume = torch.as_tensor(np.asarray(inputs["volume"][i]), dtype=torch.float32)
            depth = volume.shape[1]
            picks = np.linspace(0.2 * (depth - 1), 0.8 * (depth - 1), self.slices).round().astype(int)
            stacks.append(self.preprocess([volume[:, d] for d in picks]))
        return {"slices": torch.stack(stacks)}  # [B, S, C, H, W]

    def forward(self, batch):
        slices = batch["slices"]
        features = self.encoder(slices.flatten(0, 1))
        return features.view(*slices.shape[:2], -1).mean(dim=1)


class VolumeBackbone(Backbone):
    """A 3D encoder (``ViT3d``) over whole volumes resized to its input size."""

    def __init__(
        self,
        encoder: nn.Module,
        size: Sequence[int],
        mean: float = 0.5,
        std: float = 0.25,
        intensity: str = "encoder",
    ):
        super().__init__()
        self.encoder = encoder
        self.size = tuple(int(s) for s in size)
        self.mean, self.std, self.intensity = mean, std, intensity
        self.embed_dim = int(encoder.embed_dim)
        self.num_layers = len(encoder.blocks) + 1
        self.in_chans = _in_chans(encoder)

    def collate(self, inputs, index):
        volumes = []
        for i in index:
            volume = torch.as_tensor(np.asarray(inputs["volume"][i]), dtype=torch.float32)
            volume = F.interpolate(volume[None], size=self.size, mode="trilinear")[0]
            volumes.append(match_volume_channels(volume, self.in_chans))
        return {"volume": normalise(torch.stack(volumes), self.mean, self.std, self.intensity)}

    def preprocessing(self) -> str:
        return f"{type(self).__name__}:{self.size}:{self.mean}:{self.std}:{self.intensity}"

    def forward(self, batch):
        return self.encoder(batch["volume"])

    layer_id = ImageBackbone.layer_id


def match_volume_channels(volume: torch.Tensor, in_chans: int) -> torch.Tensor:
    if volume.shape[0] == in_chans:
        return volume
    if volume.shape[0] == 1:
        return volume.expand(in_chans, *volume.shape[1:])
    raise ConfigError(f"cannot feed a {volume.shape[0]}-channel volume to a {in_chans}-channel encoder")


def resnet18(in_chans: int) -> nn.Module:
    """ResNet-18 with no head (the supervised-from-scratch baseline of MedMNIST v2)."""
    return timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=in_chans)


def _in_chans(encoder: nn.Module) -> int:
    chans = getattr(encoder, "in_chans", None)
    if chans is None:
        first = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))
        chans = first.in_channels
    return int(chans)
