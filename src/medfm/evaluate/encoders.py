"""The encoder under evaluation and its randomly initialised twin, built as backbones for each task.

An encoder is given as a release bundle (a folder from ``medfm export`` or ``medfm pretrain``) or as a
registered name (random weights). Images keep the encoder's input channels: grey images are repeated
to RGB or RGB turned to luminance on the way in (see :func:`medfm.evaluate.backbones.check_channels`),
so the pretrained patch embedding is used as trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfm.errors import ConfigError
from medfm.evaluate.backbones import (
    Backbone,
    ImageBackbone,
    SliceBackbone,
    VolumeBackbone,
    check_channels,
)
from medfm.evaluate.tasks.base import TaskData
from medfm.models.bundle import load_bundle
from medfm.models.encoders import ENCODERS, bundle_path, create_encoder


@dataclass(frozen=True)
class EncoderSource:
    """What the encoder is: its label in results, architecture, weights and preprocessing."""

    label: str
    name: str  # registered architecture
    path: Path | None  # bundle (None: random weights)
    in_chans: int
    img_size: int | tuple[int, ...]
    mean: float = 0.5
    std: float = 0.25

    @property
    def spatial_dims(self) -> int:
        return 3 if isinstance(self.img_size, tuple) and len(self.img_size) == 3 else 2

    @property
    def random_label(self) -> str:
        return f"{self.name} (random init)"


def resolve_encoder(ref: str) -> EncoderSource:
    """Read a bundle's config (or a registered name's defaults) without building the model."""
    if not ref:
        raise ConfigError("no encoder given: pass a bundle folder (--bundle) or a registered encoder name")
    path = bundle_path(ref)
    if path is None:
        try:
            spec = ENCODERS.get(ref)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from None
        size = tuple(spec.img_size) if isinstance(spec.img_size, list | tuple) else spec.img_size
        return EncoderSource(label=f"{ref} (random init)", name=ref, path=None, in_chans=1, img_size=size)
    if not path.exists():
        raise ConfigError(f"{path} is neither a registered encoder nor an existing bundle")
    config = load_bundle(path).config
    encoder = config["encoder"]
    size = encoder.get("img_size") or ENCODERS.get(encoder["name"]).img_size
    norm = config.get("normalisation") or {}
    folder = path if path.is_dir() else path.parent
    return EncoderSource(
        label=folder.parent.name if folder.name == "bundle" else folder.name,
        name=encoder["name"],
        path=path,
        in_chans=int(encoder.get("in_chans") or 1),
        img_size=tuple(size) if isinstance(size, list) else size,
        mean=float(norm.get("mean", 0.5)),
        std=float(norm.get("std", 0.25)),
    )


def image_channels(data: TaskData) -> int:
    first = np.asarray(data.inputs["image" if "image" in data.inputs else "volume"][0])
    return 1 if first.ndim == 2 else int(first.shape[0])


def build_backbone(
    source: EncoderSource,
    data: TaskData,
    *,
    pretrained: bool,
    image_size: int = 0,
    intensity: str = "encoder",
) -> Backbone:
    """The backbone for an image, VQA or volume task; a clear error when the encoder does not fit.

    ``intensity`` is how images are normalised (see ``backbones.normalise``)."""
    kind = data.info.kind
    if kind not in ("image", "vqa", "volume"):
        raise ConfigError(f"task {data.name} takes {kind} inputs, which an image encoder cannot read")
    if source.spatial_dims == 3 and kind != "volume":
        raise ConfigError(f"encoder {source.label} is a 3D encoder; task {data.name} has 2D images")
    check_channels(image_channels(data), source.in_chans, data.name, source.label)
    weights = source.path if pretrained and source.path is not None else source.name
    if source.spatial_dims == 3:
        encoder = create_encoder(weights, in_chans=source.in_chans, img_size=source.img_size)
        return VolumeBackbone(encoder, source.img_size, source.mean, source.std, intensity)
    size = image_size or (source.img_size if isinstance(source.img_size, int) else source.img_size[0])
    encoder = create_encoder(weights, in_chans=source.in_chans, img_size=size)
    backbone_cls = SliceBackbone if kind == "volume" else ImageBackbone
    return backbone_cls(encoder, size, source.mean, source.std, intensity)
