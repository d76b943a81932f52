"""Backbones and encoder resolution: preprocessing, layer numbering, and clear errors for a bad fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfm.errors import ConfigError
from medfm.evaluate.backbones import ImageBackbone, SliceBackbone
from medfm.evaluate.encoders import build_backbone, resolve_encoder
from medfm.evaluate.tasks import TASKS
from medfm.models.bundle import save_bundle
from medfm.models.encoders import create_encoder


def test_image_backbone_matches_channels_resizes_and_normalises():
    backbone = ImageBackbone(create_encoder("test_vit", in_chans=3, img_size=32), 32, mean=0.5, std=0.25)
    grey = np.full((1, 28, 28), 255, np.uint8)
    rgb = np.zeros((3, 40, 40), np.uint8)
    batch = backbone.collate({"image": [grey, rgb]}, [0, 1])
    assert batch["image"].shape == (2, 3, 32, 32)
    assert torch.allclose(batch["image"][0], torch.full((3, 32, 32), 2.0))  # (1 - 0.5) / 0.25
    assert torch.allclose(batch["image"][1], torch.full((3, 32, 32), -2.0))
    assert backbone(batch).shape == (2, 32)


def test_per_image_intensity_standardises_each_image_and_changes_the_cache_key():
    encoder = create_encoder("test_vit", in_chans=1, img_size=32)
    fixed, own = ImageBackbone(encoder, 32), ImageBackbone(encoder, 32, intensity="per_image")
    dark = np.random.default_rng(0).integers(0, 60, (1, 32, 32)).astype(np.uint8)
    bright = dark + 150  # the same picture, exposed differently
    batch = own.collate({"image": [dark, bright]}, [0, 1])["image"]
    assert torch.allclose(batch.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(batch.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-4)
    assert torch.allclose(batch[0], batch[1], atol=1e-5)  # the offset is gone
    assert not torch.allclose(*fixed.collate({"image": [dark, bright]}, [0, 1])["image"])
    assert fixed.preprocessing() != own.preprocessing()


def test_layer_ids_follow_the_vit_blocks():
    backbone = ImageBackbone(create_encoder("test_vit"), 32)
    assert backbone.num_layers == 3  # 2 blocks + the final norm
    assert backbone.layer_id("encoder.patch_embed.proj.weight") == 0
    assert backbone.layer_id("encoder.blocks.1.attn.qkv.weight") == 2
    assert backbone.layer_id("encoder.norm.weight") == 3


def test_slice_backbone_averages_slices_of_a_volume():
    backbone = SliceBackbone(create_encoder("test_vit"), 32, slices=4)
    batch = backbone.collate({"volume": [np.random.rand(1, 10, 20, 24).astype(np.float32)]}, [0])
    assert batch["slices"].shape == (1, 4, 1, 32, 32)
    assert backbone(batch).shape == (1, 32)


def test_channel_mismatch_fails_with_a_clear_message(tmp_path, make_image_folder):
    folder = make_image_folder("rgb", patients=20, channels=3)
    data = TASKS.get("image_folder")(
        folder, label_column="finding", fractions={"train": 0.5, "test": 0.5}
    ).load()
    encoder = create_encoder("test_vit", in_chans=2)
    save_bundle(
        tmp_path / "bundle",
        encoder.state_dict(),
        {"encoder": {"name": "test_vit", "in_chans": 2, "img_size": 32}},
    )
    source = resolve_encoder(str(tmp_path / "bundle"))
    with pytest.raises(ConfigError, match=r"3-channel images but encoder \S+ takes 2 channel"):
        build_backbone(source, data, pretrained=True)


def test_3d_encoder_on_2d_images_is_refused(image_folder):
    data = TASKS.get("image_folder")(image_folder, label_column="finding").load()
    with pytest.raises(ConfigError, match="3D encoder"):
        build_backbone(resolve_encoder("test_vit3d"), data, pretrained=False)


def test_unknown_encoder_names_its_neighbours():
    with pytest.raises(ConfigError, match="did you mean"):
        resolve_encoder("test_vitt")
