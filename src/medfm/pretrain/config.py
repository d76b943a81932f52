"""``medfm pretrain`` settings: encoder, method, data, views and the training engine, in one YAML.

Importing this module imports every method module, which registers the methods in ``METHODS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medfm.engine.trainer import TrainConfig
from medfm.pretrain.dino import DINOConfig
from medfm.pretrain.mae import MAEConfig
from medfm.pretrain.views import ViewConfig


@dataclass
class PretrainDataConfig:
    corpus: str = "corpora/all-image-sources"  # a folder made by `medfm data build`
    split: str = "train"
    modalities: list[str] = field(default_factory=list)  # empty: every modality
    sources: list[str] = field(default_factory=list)  # empty: every source
    fraction: float = 1.0  # seeded random share of the split's pictures


@dataclass
class PretrainConfig:
    output: str = "runs/pretrain"
    encoder: str = (
        "vit_tiny_patch16"  # a registered name (`medfm models`) or a bundle folder to continue from
    )
    in_chans: int = 1
    image_size: int = 64  # training crop size (DINO: global crops)
    method: str = "mae"  # mae | dino
    resume: bool = True  # continue from the latest checkpoint under output/checkpoints; false starts over
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
