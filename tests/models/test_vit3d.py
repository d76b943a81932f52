"""The 3D ViT: token interface shared with the 2D ViT, any volume size the patch divides, registrations."""

from __future__ import annotations

import pytest
import torch

from medfm.models.encoders import ENCODERS, create_encoder, list_encoders
from medfm.models.vit3d import ViT3d, resample_pos_embed_3d


@pytest.fixture(scope="module")
def model() -> ViT3d:
    torch.manual_seed(0)
    return create_encoder("test_vit3d").eval()


def test_test_vit3d_spec(model):
    assert isinstance(model, ViT3d)
    assert model.spatial_dims == 3 and model.num_prefix_tokens == 1
    assert model.embed_dim == 32 and model.in_chans == 1 and len(model.blocks) == 2
    assert model.patch_size == (4, 8, 8)
    assert model.patch_embed.grid_size == (4, 4, 4)
    assert model.pos_embed.shape == (1, 1 + 64, 32)
    assert isinstance(model.patch_embed.proj, torch.nn.Conv3d)


@pytest.mark.parametrize("shape", [(16, 32, 32), (8, 16, 24), (24, 48, 32), (4, 8, 8)])
def test_shapes_for_several_sizes(model, shape):
    x = torch.randn(2, 1, *shape)
    grid = model.grid_size(shape)
    n = grid[0] * grid[1] * grid[2]
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model(x)
    assert tokens.shape == (2, 1 + n, 32)
    assert pooled.shape == (2, 32)
    assert torch.isfinite(tokens).all()
    assert torch.allclose(pooled, tokens[:, 0])


def test_pos_embed_resampling_keeps_class_slot_and_identity(model):
    pos = model.pos_embed.detach()
    assert resample_pos_embed_3d(pos, (4, 4, 4), (4, 4, 4)) is pos
    bigger = resample_pos_embed_3d(pos, (6, 8, 4), (4, 4, 4))
    assert bigger.shape == (1, 1 + 6 * 8 * 4, 32)
    assert torch.equal(bigger[:, :1], pos[:, :1])


def test_forward_features_equals_encode_of_tokenize(model):
    x = torch.randn(2, 1, 8, 32, 16)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), model.encode_tokens(model.tokenize(x)))


def test_tokenize_with_mask_replaces_exactly_the_masked_tokens(model):
    x = torch.randn(2, 1, 16, 32, 32)
    n = 64
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0, [0, 5, 63]] = True
    mask[1, 10:20] = True
    mask_token = torch.randn(1, 1, 32)
    with torch.no_grad():
        plain = model.tokenize(x)
        masked = model.tokenize(x, token_mask=mask, mask_token=mask_token)
        patch_pos = model.pos_embed[:, 1:].expand(2, -1, -1)
    assert torch.equal(masked[:, 0], plain[:, 0])
    changed = (masked[:, 1:] != plain[:, 1:]).any(dim=-1)
    assert torch.equal(changed, mask)
    expected = (mask_token + patch_pos)[mask]
    assert torch.allclose(masked[:, 1:][mask], expected)
    with pytest.raises(ValueError, match="mask_token"):
        model.tokenize(x, token_mask=mask)


def test_gradient_flows():
    torch.manual_seed(0)
    model = create_encoder("test_vit3d", global_pool="avg", in_chans=2)
    x = torch.randn(2, 2, 8, 16, 16, requires_grad=True)
    model(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    names = ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.1.mlp.fc2.weight", "norm.weight")
    for name in names:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_avg_pool_is_mean_of_patch_tokens():
    torch.manual_seed(0)
    model = create_encoder("test_vit3d", global_pool="avg").eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_features(x)[:, 1:].mean(1))


@pytest.mark.parametrize("shape", [(15, 32, 32), (16, 30, 32), (16, 32, 4)])
def test_bad_input_size_is_a_clear_error(model, shape):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 1, *shape))


def test_wrong_rank_input(model):
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\]"):
        model(torch.randn(1, 1, 32, 32))


def test_img_size_int_or_tuple():
    cubic = create_encoder("test_vit3d", img_size=32, patch_size=8)
    assert cubic.patch_size == (8, 8, 8) and cubic.patch_embed.grid_size == (4, 4, 4)
    boxed = create_encoder("test_vit3d", img_size=(8, 64, 32))
    assert boxed.patch_embed.grid_size == (2, 8, 4)
    assert boxed.pos_embed.shape[1] == 1 + 64
    with pytest.raises(ValueError, match="multiple of the patch size"):
        create_encoder("test_vit3d", img_size=(10, 32, 32))


def test_registered_3d_names():
    assert list_encoders("vit3d_*") == ["vit3d_base_patch16", "vit3d_small_patch16", "vit3d_tiny_patch16"]
    assert "test_vit3d" in list_encoders("test_*")
    for size, dim in (("tiny", 192), ("small", 384), ("base", 768)):
        spec = ENCODERS.get(f"vit3d_{size[0]}16")
        assert spec.cls is ViT3d and spec.arch["embed_dim"] == dim
        assert spec.arch["patch_size"] == (16, 16, 16) and spec.img_size == (96, 96, 96)


def test_tiny_builds_and_runs():
    model = create_encoder("vit3d_tiny_patch16", depth=1).eval()
    assert model.pos_embed.shape == (1, 1 + 6 * 6 * 6, 192)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 16)).shape == (1, 192)
