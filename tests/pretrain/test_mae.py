"""MAE: patch layout, masking, the masked-only loss, and a short training run on real X-rays."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from medfm.errors import ConfigError
from medfm.models.encoders import create_encoder
from medfm.pretrain.base import METHODS
from medfm.pretrain.mae import MAE, MAEConfig, sincos_pos_embed
from medfm.pretrain.views import CropView

SMALL = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def make_mae(image_size: int = 32, **config) -> MAE:
    torch.manual_seed(0)
    return MAE(
        create_encoder("test_vit", in_chans=1, img_size=image_size),
        MAEConfig(**{**SMALL, **config}),
        image_size,
    )


def make_mae3d(**config) -> MAE:
    torch.manual_seed(0)
    encoder = create_encoder("test_vit3d", in_chans=1, img_size=(16, 32, 32))
    return MAE(encoder, MAEConfig(**{**SMALL, **config}), (16, 32, 32))


def conv_as_linear(mae: MAE, imgs: torch.Tensor) -> torch.Tensor:
    """The encoder's patch embedding computed from ``patchify`` output: equal only if the layouts agree."""
    proj = mae.encoder.patch_embed.proj
    dims = proj.weight.ndim
    weight = proj.weight.permute(0, *range(2, dims), 1).reshape(proj.weight.shape[0], -1)  # [D, p..., C]
    return mae.patchify(imgs) @ weight.T + proj.bias


def test_patchify_round_trip_and_layout_2d():
    mae = make_mae()
    imgs = torch.randn(2, 1, 32, 48)  # not the training size
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 4 * 6, 64)
    # Row-major patches: patch 1 is rows 0..7, columns 8..15.
    assert torch.equal(patches[:, 1], imgs[:, :, 0:8, 8:16].reshape(2, 64))
    assert torch.equal(mae.unpatchify(patches, (32, 48)), imgs)
    # Patch i is token i of the encoder (so the loss mask lines up with the encoder's masking).
    tokens = mae.encoder.patch_embed(imgs).flatten(1, 2)
    torch.testing.assert_close(conv_as_linear(mae, imgs), tokens, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of patch size"):
        mae.patchify(torch.zeros(1, 1, 30, 32))


def test_patchify_multichannel_round_trip():
    torch.manual_seed(0)
    mae = MAE(create_encoder("test_vit", in_chans=3, img_size=32), MAEConfig(**SMALL), 32)
    imgs = torch.randn(2, 3, 16, 24)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    assert torch.equal(patches[0, 0, :3], imgs[0, :, 0, 0])  # channel fastest
    assert torch.equal(mae.unpatchify(patches, (16, 24)), imgs)
    assert mae.decoder_pred.out_features == 8 * 8 * 3


def test_patchify_round_trip_and_layout_3d():
    mae = make_mae3d()
    imgs = torch.randn(2, 1, 8, 32, 16)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 2 * 4 * 2, 4 * 8 * 8)
    assert torch.equal(mae.unpatchify(patches, (8, 32, 16)), imgs)
    tokens = mae.encoder.patch_embed(imgs)
    torch.testing.assert_close(conv_as_linear(mae, imgs), tokens, rtol=1e-4, atol=1e-4)


def test_forward_and_reconstruct_3d():
    mae = make_mae3d()
    vols = torch.rand(2, 1, 16, 32, 32)
    out = mae({"image": vols})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert mae.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    rec, mask_image = mae.reconstruct(vols)
    assert rec.shape == mask_image.shape == vols.shape
    assert mask_image.mean().item() == pytest.approx(0.75)  # grid 4x4x4: 48 of 64 patches hidden


def test_random_masking_counts_and_restore():
    mae = make_mae(mask_ratio=0.75)
    b, n, d = 4, 16, 3
    tokens = torch.arange(n, dtype=torch.float32).reshape(1, n, 1).expand(b, n, d).contiguous()
    kept, mask, ids_restore = mae.random_masking(tokens)
    assert kept.shape == (b, 4, d)
    assert mask.shape == (b, n) and mask.dtype.is_floating_point
    assert torch.equal(mask.sum(dim=1), torch.full((b,), 12.0))
    for i in range(b):
        visible = torch.nonzero(mask[i] == 0).flatten()
        assert torch.equal(kept[i, :, 0].sort().values.long(), visible)
        assert sorted(ids_restore[i].tolist()) == list(range(n))
        # Visible token j sits at ids_restore[j] of the kept list.
        assert torch.equal(kept[i, ids_restore[i, visible], 0].long(), visible)
    assert not all(torch.equal(mask[0], mask[i]) for i in range(1, b))  # masks differ per sample


def test_random_masking_follows_global_seed():
    mae = make_mae()
    tokens = torch.randn(2, 16, 4)
    torch.manual_seed(3)
    first = mae.random_masking(tokens)[1]
    torch.manual_seed(3)
    assert torch.equal(first, mae.random_masking(tokens)[1])


def test_tokens_go_where_the_mask_says():
    mae = make_mae()
    imgs = torch.rand(2, 1, 32, 32)
    seen = {}
    mae.encoder.blocks.register_forward_pre_hook(lambda m, args: seen.update(encoder=args[0]))
    mae.decoder_blocks.register_forward_pre_hook(lambda m, args: seen.update(decoder=args[0]))
    torch.manual_seed(1)
    latent, mask, ids_restore = mae.forward_encoder(imgs)
    mae.forward_decoder(latent, ids_restore)
    all_tokens = mae.encoder.tokenize(imgs)
    decoder_in = seen["decoder"] - mae.decoder_pos_embed
    embedded = mae.decoder_embed(latent)
    for b in range(2):
        visible = torch.nonzero(mask[b] == 0).flatten()
        hidden = torch.nonzero(mask[b]).flatten()
        # The encoder gets the class token and exactly the visible patch tokens (in shuffled order).
        enc_in = seen["encoder"][b]
        torch.testing.assert_close(enc_in[0], all_tokens[b, 0])
        torch.testing.assert_close(enc_in[1 + ids_restore[b, visible]], all_tokens[b, 1 + visible])
        # The decoder gets each encoded visible token back at its patch's position, mask tokens elsewhere.
        torch.testing.assert_close(decoder_in[b, 0], embedded[b, 0])
        torch.testing.assert_close(decoder_in[b, 1 + visible], embedded[b, 1 + ids_restore[b, visible]])
        torch.testing.assert_close(decoder_in[b, 1 + hidden], mae.mask_token[0].expand(len(hidden), -1))


def test_forward_loss_counts_only_masked_patches():
    for norm in (True, False):
        mae = make_mae(norm_pix_loss=norm)
        imgs = torch.rand(2, 1, 32, 32)
        target = mae._target(imgs)
        mask = torch.zeros(2, 16)
        mask[:, :12] = 1
        pred = target.clone()
        pred[:, 12:] += 5.0  # visible patches wrong
        assert mae.forward_loss(imgs, pred, mask).item() == pytest.approx(0.0, abs=1e-10)
        pred[:, :12] += 1.0  # hidden patches off by one
        assert mae.forward_loss(imgs, pred, mask).item() == pytest.approx(1.0, rel=1e-5)


def test_norm_pix_loss_changes_the_target():
    imgs = torch.rand(2, 1, 32, 32) * 0.5 + 0.25
    pred = torch.zeros(2, 16, 64)
    mask = torch.ones(2, 16)
    plain = make_mae(norm_pix_loss=False).forward_loss(imgs, pred, mask)
    normed = make_mae(norm_pix_loss=True).forward_loss(imgs, pred, mask)
    assert plain.item() == pytest.approx(imgs.square().mean().item(), rel=1e-5)
    # A zero prediction of normalised patches misses by their unit variance: (n - 1) / n of it.
    assert normed.item() == pytest.approx(63 / 64, rel=1e-3)


def test_forward_logs_and_gradients():
    mae = make_mae()
    out = mae({"image": torch.rand(3, 1, 32, 32)})
    assert set(out) == {"loss", "mask_ratio"}
    assert out["loss"].ndim == 0 and out["loss"].requires_grad
    assert out["mask_ratio"] == pytest.approx(0.75)
    out["loss"].backward()
    for param in (mae.encoder.patch_embed.proj.weight, mae.encoder.cls_token, mae.mask_token):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert "decoder_pos_embed" not in dict(mae.named_parameters())


def test_other_input_size_recomputes_decoder_positions():
    mae = make_mae()
    out = mae({"image": torch.rand(2, 1, 48, 32)})
    assert torch.isfinite(out["loss"])
    assert torch.equal(mae._pos_embed_for((6, 4), 24)[0, 1:], sincos_pos_embed(32, (6, 4)))
    with pytest.raises(ValueError, match="do not fill"):
        mae._pos_embed_for((4, 4), 24)


def test_sincos_pos_embed():
    embed = sincos_pos_embed(32, (4, 4))
    assert embed.shape == (16, 32)
    assert torch.unique(embed, dim=0).shape[0] == 16
    assert embed[:, ::2].abs().max() <= 1
    embed3 = sincos_pos_embed(32, (2, 3, 4))  # 32 channels: 3 x 10 used, 2 zero
    assert embed3.shape == (24, 32) and torch.count_nonzero(embed3[:, 30:]) == 0
    assert torch.unique(embed3, dim=0).shape[0] == 24


def test_reconstruct_undoes_patch_normalisation():
    mae = make_mae(norm_pix_loss=True)
    imgs = torch.rand(2, 1, 32, 32)
    mae.forward_decoder = lambda latent, ids_restore, grid=None: mae._target(imgs)  # a perfect decoder
    rec, mask_image = mae.reconstruct(imgs)
    torch.testing.assert_close(rec, imgs, rtol=1e-3, atol=1e-3)
    assert mask_image.shape == imgs.shape
    assert set(mask_image.unique().tolist()) == {0.0, 1.0}
    assert mask_image.mean().item() == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mask_ratio": 0.0}, "mask_ratio must be between 0 and 1"),
        ({"mask_ratio": 1.0}, "mask_ratio must be between 0 and 1"),
        ({"mask_ratio": 1.5}, "mask_ratio must be between 0 and 1"),
        ({"decoder_dim": 30, "decoder_heads": 4}, "divisible by mae.decoder_heads"),
        ({"image_size": 8}, "hides no patch"),  # a single patch: nothing left to hide
    ],
)
def test_bad_config_is_a_clear_error(config, message):
    with pytest.raises(ConfigError, match=message):
        make_mae(**config)


def test_image_size_must_fit_patches():
    with pytest.raises(ConfigError, match="patch size"):
        make_mae(image_size=36)


def test_encoder_weights_under_prefix_load_into_plain_encoder():
    mae = make_mae()
    assert METHODS.get("mae") is MAE
    prefix = MAE.encoder_prefix
    state = {k[len(prefix) :]: v for k, v in mae.state_dict().items() if k.startswith(prefix)}
    assert any(k.startswith("decoder") for k in mae.state_dict())
    fresh = create_encoder("test_vit", in_chans=1, img_size=32)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.patch_embed.proj.weight, mae.encoder.patch_embed.proj.weight)
    assert mae.export_config() == {**MAEConfig().__dict__, **SMALL}


def test_views_crop_to_training_size():
    mae = make_mae()
    view = mae.views()
    assert isinstance(view, CropView)
    out = view(torch.rand(1, 40, 40), torch.Generator().manual_seed(0))
    assert out["image"].shape == (1, 32, 32)


def test_loss_goes_down_on_real_xrays(data_root):
    from medfm.data.sources import open_source

    source = open_source("pneumoniamnist", data_root / "pneumoniamnist", splits=["train"])
    images = [torch.from_numpy(sample["image"]) for sample in itertools.islice(source, 16)]
    imgs = F.interpolate(torch.stack(images).float() / 255, size=32, mode="bilinear", align_corners=False)
    mae = make_mae(norm_pix_loss=True)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = mae({"image": imgs})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
