"""Encoders by name: ``create_encoder("vit_small_patch16", in_chans=1, img_size=128)``.

Every name maps to an :class:`EncoderSpec` (a class and its architecture). 2D encoders are timm Vision
Transformers (:mod:`medfm.models.vit`), ``vit3d_*`` names are volume encoders (:mod:`medfm.models.vit3d`);
``test_*`` names are tiny variants for tests and smoke runs. ``create_encoder`` also takes the path of a
release bundle (see :mod:`medfm.models.bundle`) and returns the encoder with its trained weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from medfm.errors import ConfigError
from medfm.models.vit import ViT
from medfm.models.vit3d import ViT3d
from medfm.registry import Registry


@dataclass(frozen=True)
class EncoderSpec:
    cls: type[nn.Module]
    arch: dict[str, Any] = field(default_factory=dict)
    img_size: int | tuple[int, ...] = 224


ENCODERS: Registry[EncoderSpec] = Registry("encoder")
# File endings that make create_encoder read its argument as a path (pickle ones are refused with advice).
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

# The ViT sizes of the ViT paper and DeiT (BioVFM trains T, S, B, L and H), below them a ladder of small
# sizes (0.2M, 0.7M, 2.7M parameters) for scaling studies a CPU can run at 32-64 px with 4-pixel patches.
VIT_SIZES = {
    "pico": {"embed_dim": 64, "depth": 4, "num_heads": 2},
    "nano": {"embed_dim": 96, "depth": 6, "num_heads": 3},
    "micro": {"embed_dim": 192, "depth": 6, "num_heads": 3},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
}
VIT_PATCHES = {
    "pico": (4, 8),
    "nano": (4, 8),
    "micro": (4, 8),
    "tiny": (16, 8),
    "small": (16, 14, 8),
    "base": (16, 14, 8),
    "large": (16, 14),
    "huge": (14,),
}

for _size, _patches in VIT_PATCHES.items():
    for _patch in _patches:
        ENCODERS.register(
            f"vit_{_size}_patch{_patch}",
            EncoderSpec(ViT, {**VIT_SIZES[_size], "patch_size": _patch}),
            aliases=(f"vit_{_size[0]}{_patch}",),
        )
ENCODERS.register(
    "test_vit", EncoderSpec(ViT, {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}, 32)
)

# Volume encoders: cubic 16-voxel patches, built for 96^3 crops (216 tokens).
for _size in ("tiny", "small", "base"):
    ENCODERS.register(
        f"vit3d_{_size}_patch16",
        EncoderSpec(ViT3d, {**VIT_SIZES[_size], "patch_size": (16, 16, 16)}, (96, 96, 96)),
        aliases=(f"vit3d_{_size[0]}16",),
    )
ENCODERS.register(
    "test_vit3d",
    EncoderSpec(ViT3d, {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": (4, 8, 8)}, (16, 32, 32)),
)


def register_encoder(
    name: str, cls: type[nn.Module], *, img_size: int | tuple[int, ...] = 224, **arch: Any
) -> EncoderSpec:
    """Add an encoder name (for example a new size) to the registry."""
    return ENCODERS.register(name, EncoderSpec(cls, arch, img_size))


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names (not aliases) matching a shell-style wildcard, sorted."""
    return ENCODERS.list(pattern)


def bundle_path(name: str | Path) -> Path | None:
    """The path ``name`` stands for when it is not a registered encoder name but a file or folder."""
    if isinstance(name, str):
        if name in ENCODERS:
            return None
        looks_like_path = "/" in name or os.sep in name or Path(name).suffix in WEIGHT_SUFFIXES
        if not looks_like_path and not (Path(name) / "model.safetensors").is_file():
            return None
    return Path(name)


def create_encoder(
    name: str | Path,
    *,
    in_chans: int | None = None,
    img_size: int | tuple[int, ...] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build an encoder by registered name (randomly initialised), or load one from a bundle path.

    ``img_size`` sets the position-embedding grid the model is built for (an int, or a tuple: ``(H, W)``
    for 2D, ``(D, H, W)`` for 3D); encoders still take other sizes at run time (the embeddings are
    resampled). ``in_chans`` defaults to 1 for a name and to the bundle's channels for a bundle.
    ``overrides`` replace architecture settings (``drop_path_rate=0.1``, ``patch_size=8``, ...).

    A path to a bundle folder (one holding ``model.safetensors``) or to a ``.safetensors`` file loads
    the bundle's encoder with its weights, as :func:`medfm.models.bundle.load_encoder` does.
    """
    path = bundle_path(name)
    if path is not None:
        if not path.exists():
            raise ConfigError(f"{path} is neither a registered encoder nor an existing bundle path")
        from medfm.models.bundle import load_encoder  # imported here: bundle imports this module

        return load_encoder(path, img_size=img_size, in_chans=in_chans, **overrides)
    try:
        spec = ENCODERS.get(name)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    in_chans = 1 if in_chans is None else in_chans
    if in_chans < 1:
        raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
    size = img_size if img_size is not None else spec.img_size
    if isinstance(size, list):
        size = tuple(size)
    return spec.cls(**{**spec.arch, **overrides}, in_chans=in_chans, img_size=size)


# Signal and ICU-series encoders register themselves with the ViTs (imported last: they use register_encoder).
from medfm.models import timeseries  # noqa: E402, F401
