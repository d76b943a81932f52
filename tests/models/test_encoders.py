"""The encoder registry: every 2D name builds, aliases resolve, unknown names get suggestions."""

from __future__ import annotations

import pytest
import torch

from medfm.errors import ConfigError, MedfmError
from medfm.models.encoders import ENCODERS, VIT_PATCHES, VIT_SIZES, create_encoder, list_encoders
from medfm.models.vit import ViT

NAMES_2D = [name for name in list_encoders() if ENCODERS.get(name).cls is ViT]
CHEAP = [name for name in NAMES_2D if name.startswith(("vit_tiny", "vit_small", "test_"))]


def test_all_vit_sizes_and_patches_registered():
    expected = {f"vit_{size}_patch{patch}" for size, patches in VIT_PATCHES.items() for patch in patches}
    assert expected | {"test_vit"} == set(NAMES_2D)


@pytest.mark.parametrize("name", CHEAP)
def test_cheap_encoders_build_for_grey_64px(name):
    # Built and run on the meta device: the full architecture and every shape, without the seconds that
    # initialising and running the real weights take (test_real_forward does that for the smallest).
    spec = ENCODERS.get(name)
    patch = spec.arch["patch_size"]
    side = 64 // patch * patch  # 64 px, or the nearest size below that the patch divides (56 for 14)
    with torch.device("meta"):
        model = create_encoder(name, in_chans=1, img_size=side)
        out = model(torch.empty(1, 1, side, side))
    assert model.in_chans == 1 and model.spatial_dims == 2
    assert model.patch_size == (patch, patch)
    assert model.embed_dim == spec.arch["embed_dim"] and len(model.blocks) == spec.arch["depth"]
    assert out.shape == (1, spec.arch["embed_dim"])


@pytest.mark.parametrize("name", ["test_vit", "vit_t16"])
def test_real_forward(name):
    torch.manual_seed(0)
    model = create_encoder(name, img_size=64).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, model.embed_dim)
    assert torch.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("name", [n for n in NAMES_2D if n not in CHEAP])
def test_big_encoder_specs(name):
    size = name.split("_")[1]
    spec = ENCODERS.get(name)
    for key, value in VIT_SIZES[size].items():
        assert spec.arch[key] == value
    assert f"patch{spec.arch['patch_size']}" in name


def test_known_dims():
    assert ENCODERS.get("vit_base_patch16").arch["embed_dim"] == 768
    assert ENCODERS.get("vit_large_patch14").arch["embed_dim"] == 1024
    assert ENCODERS.get("vit_huge_patch14").arch["embed_dim"] == 1280


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("vit_s16", "vit_small_patch16"),
        ("vit_t8", "vit_tiny_patch8"),
        ("vit_h14", "vit_huge_patch14"),
        ("vit3d_t16", "vit3d_tiny_patch16"),
    ],
)
def test_aliases(alias, name):
    assert ENCODERS.get(alias) is ENCODERS.get(name)


def test_unknown_name_suggests():
    with pytest.raises(ConfigError, match="did you mean") as info:
        create_encoder("vit_smal_patch16")
    assert "vit_small_patch16" in str(info.value)


def test_unknown_path_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a registered encoder nor an existing bundle"):
        create_encoder(str(tmp_path / "nowhere" / "model.safetensors"))
    with pytest.raises(MedfmError, match=r"is not a bundle: it has no model\.safetensors"):
        create_encoder(tmp_path)


def test_bad_in_chans():
    with pytest.raises(ConfigError, match="in_chans"):
        create_encoder("test_vit", in_chans=0)


def test_overrides_and_img_size():
    model = create_encoder("test_vit", in_chans=3, img_size=(32, 48), drop_path_rate=0.1)
    assert model.in_chans == 3
    assert model.pos_embed.shape == (1, 1 + 4 * 6, 32)


def test_list_encoders():
    assert list_encoders("test_*") == ["test_vit", "test_vit3d"]
    assert "vit_s16" not in list_encoders()
    assert list_encoders("nothing*") == []
