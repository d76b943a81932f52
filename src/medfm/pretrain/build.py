"""The encoder and the method around it, from a pretraining config.

Kept apart from the job so that code timing or reusing a method (benchmarks, later stages) does not pull
in the corpus readers.
"""

from __future__ import annotations

from medfm.engine.trainer import seed_everything
from medfm.errors import ConfigError
from medfm.models.encoders import create_encoder
from medfm.pretrain.base import METHODS, PretrainMethod
from medfm.pretrain.config import PretrainConfig


def build_method(config: PretrainConfig) -> PretrainMethod:
    """The encoder and the method around it, from a pretraining config (weights seeded by ``train.seed``)."""
    try:
        method_cls = METHODS.get(config.method)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    seed_everything(config.train.seed)
    encoder = create_encoder(config.encoder, in_chans=config.in_chans, img_size=config.image_size)
    return method_cls(encoder, getattr(config, config.method), config.image_size, views=config.views)
