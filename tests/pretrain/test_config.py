from pathlib import Path

import pytest

from medfm.config import load_config
from medfm.errors import ConfigError
from medfm.pretrain.build import build_method
from medfm.pretrain.config import PretrainConfig
from medfm.pretrain.job import steps_per_epoch

RECIPE_DIR = Path(__file__).parents[2] / "configs" / "pretrain"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
# Training pictures of corpora/all-image-sources-128, the recipes' corpus (results/pcs/pcs.md).
REFERENCE_TRAIN_PICTURES = 32998


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_names_a_known_encoder_and_method(path):
    from medfm.models.encoders import ENCODERS
    from medfm.pretrain.base import METHODS

    config = load_config(PretrainConfig, path)
    assert config.encoder in ENCODERS and config.method in METHODS
    assert config.train.steps > config.train.warmup_steps


def test_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"mae-vit-tiny8-64", "dino-vit-tiny8-64", "mae-vit-base16-224"}


def test_overrides_reach_nested_sections_and_bad_keys_are_named():
    config = load_config(PretrainConfig, None, ["train.steps=7", "mae.mask_ratio=0.6", "views.hflip=0"])
    assert (config.train.steps, config.mae.mask_ratio, config.views.hflip) == (7, 0.6, 0.0)
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        load_config(PretrainConfig, None, ["train.stepz=7"])


def test_dino_recipe_ends_after_the_last_layers_start_learning():
    config = load_config(PretrainConfig, RECIPE_DIR / "dino-vit-tiny8-64.yaml")
    per_epoch = steps_per_epoch(REFERENCE_TRAIN_PICTURES, config, world_size=1)
    build_method(config).check_schedule(config.train.steps, per_epoch)
