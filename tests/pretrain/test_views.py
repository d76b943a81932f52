from __future__ import annotations

import pytest
import torch

from medfm.config import load_config
from medfm.errors import ConfigError
from medfm.pretrain.views import CropView, MultiCropView, ViewConfig, block_mask, match_channels


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grey_image(size: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, size, size, generator=gen(seed))


def colour_image(size: int = 128, seed: int = 0) -> torch.Tensor:
    image = torch.rand(3, size, size, generator=gen(seed))
    image[0] = image[0] * 0.5 + 0.5  # reddish, like a fundus photograph
    return image


def multi_crop(config: ViewConfig | None = None, **kwargs) -> MultiCropView:
    args = dict(global_size=64, local_size=32, n_global=2, n_local=3, in_chans=1, patch_size=8)
    args.update(kwargs)
    return MultiCropView(config or ViewConfig(), **args)


def test_same_seed_same_views_other_seed_other_views():
    image = colour_image()
    for view in (CropView(ViewConfig(blur=0.5), 64, 3), multi_crop(in_chans=3)):
        first, again, other = view(image, gen(1)), view(image, gen(1)), view(image, gen(2))
        for key in first:
            assert torch.equal(first[key], again[key])
        assert any(not torch.equal(first[key], other[key]) for key in first)


def test_views_leave_the_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    CropView(ViewConfig(blur=1.0), 64, 1)(grey_image(), gen(0))
    multi_crop()(grey_image(), gen(0))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("channels", "in_chans"), [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_crop_view_shapes_and_dtype(channels, in_chans):
    image = grey_image() if channels == 1 else colour_image()
    out = CropView(ViewConfig(), 64, in_chans)(image, gen(0))
    assert set(out) == {"image"}
    assert out["image"].shape == (in_chans, 64, 64)
    assert out["image"].dtype == torch.float32
    assert torch.isfinite(out["image"]).all()


def test_normalisation_is_applied_last():
    config = ViewConfig(intensity_jitter=0.0, min_foreground=0.0, mean=0.5, std=0.25)
    image = torch.full((1, 100, 80), 0.75)
    out = CropView(config, 32, 3)(image, gen(0))["image"]
    torch.testing.assert_close(out, torch.ones(3, 32, 32))
    # uint8 images are read as [0, 255]
    out8 = CropView(config, 32, 1)((image * 255).to(torch.uint8), gen(0))["image"]
    torch.testing.assert_close(out8, torch.full((1, 32, 32), (191 / 255 - 0.5) / 0.25))


def test_match_channels():
    grey = grey_image(8)
    assert torch.equal(match_channels(grey, 3), grey.expand(3, 8, 8))
    rgb = torch.stack([torch.full((4, 4), 1.0), torch.zeros(4, 4), torch.zeros(4, 4)])
    torch.testing.assert_close(match_channels(rgb, 1), torch.full((1, 4, 4), 0.299))
    assert match_channels(rgb, 3) is rgb
    with pytest.raises(ConfigError, match="2-channel"):
        match_channels(torch.zeros(2, 4, 4), 3)


def test_grey_images_never_get_colour_jitter():
    config = ViewConfig(colour_jitter=1.0, intensity_jitter=0.5)
    grey_rgb = grey_image().expand(3, -1, -1).clone()
    for seed in range(20):
        for image in (grey_image(), grey_rgb):
            out = CropView(config, 32, 3)(image, gen(seed))["image"]
            assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
            crops = multi_crop(config, in_chans=3)(image, gen(seed))
            for key in ("global_crops", "local_crops"):
                assert torch.equal(crops[key][:, 0], crops[key][:, 1])
                assert torch.equal(crops[key][:, 1], crops[key][:, 2])
    # ... while colour images do get it (same seed, only colour_jitter differs)
    plain, jittered = ViewConfig(colour_jitter=0.0), ViewConfig(colour_jitter=0.5)
    changed = [
        not torch.equal(
            CropView(plain, 32, 3)(colour_image(), gen(s))["image"],
            CropView(jittered, 32, 3)(colour_image(), gen(s))["image"],
        )
        for s in range(10)
    ]
    assert any(changed)
    for seed in range(10):
        same = CropView(plain, 32, 3)(grey_image(), gen(seed))["image"]
        assert torch.equal(same, CropView(jittered, 32, 3)(grey_image(), gen(seed))["image"])


def test_intensity_aware_crops_land_on_the_foreground():
    image = torch.zeros(1, 128, 128)
    image[:, :64, :64] = 1.0  # one bright quadrant, the rest black padding

    def foreground(min_foreground: float, n: int = 60) -> torch.Tensor:
        config = ViewConfig(
            crop_scale=[0.05, 0.3], min_foreground=min_foreground, intensity_jitter=0.0, mean=0.0, std=1.0
        )
        view = CropView(config, 32, 1)
        return torch.stack([(view(image, gen(s))["image"] > 0.5).float().mean() for s in range(n)])

    aware, blind = foreground(0.6), foreground(0.0)
    assert blind.mean() < 0.45
    assert aware.mean() > blind.mean() + 0.3
    # ten proposals can all miss; then the one with the most foreground is used
    assert (aware > 0.5).float().mean() > 0.8
    assert aware.min() > 0.2


def test_default_config_prefers_foreground():
    image = torch.zeros(1, 128, 128)
    image[:, 32:96, 32:64] = 1.0  # an eighth of the image bright
    config = ViewConfig(intensity_jitter=0.0, mean=0.0, std=1.0)
    blind = ViewConfig(intensity_jitter=0.0, mean=0.0, std=1.0, min_foreground=0.0)
    fractions = [
        [(CropView(c, 32, 1)(image, gen(s))["image"] > 0.5).float().mean() for s in range(40)]
        for c in (config, blind)
    ]
    aware, plain = (torch.stack(f) for f in fractions)
    assert (aware >= 0.2).float().mean() > (plain >= 0.2).float().mean() + 0.2


def test_multi_crop_shapes():
    out = multi_crop(n_global=2, n_local=3, in_chans=3)(colour_image(), gen(0))
    assert out["global_crops"].shape == (2, 3, 64, 64)
    assert out["local_crops"].shape == (3, 3, 32, 32)
    assert out["ibot_masks"].shape == (2, 64) and out["ibot_masks"].dtype == torch.bool
    empty = multi_crop(n_local=0, local_size=16)(grey_image(), gen(0))
    assert empty["local_crops"].shape == (0, 1, 16, 16)


def test_ibot_masks_hit_the_requested_ratio():
    exact = multi_crop(n_global=2, mask_ratio=[0.3, 0.3], mask_probability=1.0)
    for seed in range(10):
        masks = exact.mask(gen(seed))
        assert int(masks.sum()) == round(0.3 * 64)
    ranged = multi_crop(n_global=1, mask_ratio=[0.1, 0.5], mask_probability=1.0)
    ratios = torch.stack([ranged.mask(gen(s)).float().mean() for s in range(200)])
    assert ratios.min() >= 0.09 and ratios.max() <= 0.51
    assert abs(ratios.mean().item() - 0.3) < 0.04
    never = multi_crop(mask_probability=0.0)
    assert not never(grey_image(), gen(0))["ibot_masks"].any()
    half = multi_crop(n_global=1, mask_probability=0.5)
    masked = torch.tensor([bool(half.mask(gen(s)).any()) for s in range(200)]).float().mean()
    assert 0.35 < masked < 0.65


def test_block_mask_exact_counts_and_blocks():
    for target in (0, 1, 5, 16, 30, 36):
        mask = block_mask(6, 6, target, gen(target))
        assert mask.shape == (6, 6) and int(mask.sum()) == target
    # masks are made of rectangles: masked patches mostly have a masked neighbour
    mask = block_mask(14, 14, 60, gen(0))
    padded = torch.nn.functional.pad(mask.float(), (1, 1, 1, 1))
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    assert (neighbours[mask] > 0).float().mean() > 0.9


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"crop_scale": [0.5, 0.2]}, "crop_scale"),
        ({"crop_scale": [0.5]}, "crop_scale"),
        ({"local_crop_scale": [0.0, 0.3]}, "local_crop_scale"),
        ({"aspect_ratio": [-1.0, 2.0]}, "aspect_ratio"),
        ({"hflip": 1.5}, "hflip"),
        ({"intensity_jitter": 1.0}, "intensity_jitter"),
        ({"colour_jitter": -0.1}, "colour_jitter"),
        ({"blur": 2.0}, "blur"),
        ({"min_foreground": 1.1}, "min_foreground"),
        ({"background_level": 1.0}, "background_level"),
        ({"std": 0.0}, "std"),
    ],
)
def test_bad_config_raises(changes, key):
    config = ViewConfig(**changes)
    with pytest.raises(ConfigError, match=key):
        config.check()
    with pytest.raises(ConfigError, match=key):
        CropView(config, 32, 1)


def test_bad_multi_crop_arguments_raise():
    with pytest.raises(ConfigError, match="global_size"):
        multi_crop(global_size=60)
    with pytest.raises(ConfigError, match="local_size"):
        multi_crop(local_size=4)
    with pytest.raises(ConfigError, match="mask_ratio"):
        multi_crop(mask_ratio=[0.6, 0.2])
    with pytest.raises(ConfigError, match="mask_probability"):
        multi_crop(mask_probability=1.5)


def test_view_config_loads_through_omegaconf():
    config = load_config(ViewConfig, overrides=["crop_scale=[0.2,0.9]", "blur=0.1"])
    assert config.crop_scale == [0.2, 0.9] and config.blur == 0.1
    config.check()
