"""Random views of medical images for self-supervised pretraining (MAE crops, DINO/iBOT multi-crops).

Every view takes ``image`` ``[C, H, W]`` float in ``[0, 1]`` (C = 1 for radiographs and CT/MR slices, 3
for fundus photographs and RGB-stored images) and a ``torch.Generator``, and draws *all* its randomness
from that generator, so the engine's per-sample generators make a resumed run draw the same views.

Choices made for medical images rather than natural photographs:

- **Intensity-aware crops.** Corpus images are padded with black to square and CT/MR slices are mostly
  air, so a random crop often sees nothing. A crop proposal is accepted only when at least
  ``min_foreground`` of its pixels are brighter than ``background_level``; after
  :data:`CROP_ATTEMPTS` proposals the one with the most foreground is used.
- **Colour jitter only on colour images.** Saturation and hue jitter are applied only to images with
  three channels that really differ; a grey image (one channel, or three equal ones) never gets colour,
  so radiographs stay grey.
- **Grayscale-aware channels.** :func:`match_channels` repeats a grey channel for 3-channel encoders and
  takes the luminance of a colour image for 1-channel encoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as tvf

from medfm.errors import ConfigError

CROP_ATTEMPTS = 10
"""Crop proposals tried before falling back to the one with the most foreground."""

JITTER_PROBABILITY = 0.8
"""Probability that an image gets intensity (and, if it has colour, colour) jitter."""

COLOUR_TOLERANCE = 2.0 / 255.0
"""Channels that differ by at most this much everywhere count as grey (8-bit rounding of grey images)."""

BLOCK_ASPECT = (0.3, 1.0 / 0.3)
"""Aspect ratio range of the rectangles of patches that make an iBOT mask (as in BEiT and iBOT)."""

BLOCK_MIN_PATCHES = 4
"""Smallest rectangle of an iBOT mask, in patches (smaller only to fill the last few patches)."""

LUMINANCE = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B."""

# RGB -> YIQ; colour jitter scales (saturation) and rotates (hue) the I-Q chroma plane, keeping luma.
_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_INV = torch.linalg.inv(_YIQ)


@dataclass
class ViewConfig:
    """Augmentation settings shared by :class:`CropView` (MAE) and :class:`MultiCropView` (DINO)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    """Area fraction range of MAE crops and DINO global crops."""
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.35])
    """Area fraction range of DINO local crops."""
    aspect_ratio: list[float] = field(default_factory=lambda: [0.75, 1.333])
    """Width / height range of crops (sampled log-uniformly)."""
    hflip: float = 0.5
    """Probability of a horizontal flip."""
    intensity_jitter: float = 0.2
    """Brightness and contrast factors drawn in ``[1 - s, 1 + s]`` (with probability 0.8)."""
    colour_jitter: float = 0.1
    """Saturation factor in ``[1 - s, 1 + s]`` and hue turn in ``±s/2`` of a circle; colour images only."""
    blur: float = 0.0
    """Probability of a Gaussian blur (sigma 0.1-2 px at 224 px, scaled with the crop size)."""
    min_foreground: float = 0.25
    """Fraction of a crop's pixels that must be above ``background_level`` (0 turns the check off)."""
    background_level: float = 0.05
    """Intensity at or below which a pixel counts as background (padding, air)."""
    mean: float = 0.5
    """Normalisation, applied last to every channel: ``(x - mean) / std``."""
    std: float = 0.25

    def check(self) -> ViewConfig:
        """Raise :class:`ConfigError` naming the first invalid key; return ``self``."""
        for key in ("crop_scale", "local_crop_scale"):
            low, high = _pair(self, key)
            if not 0.0 < low <= high <= 1.0:
                raise ConfigError(f"views.{key} must satisfy 0 < min <= max <= 1, got {[low, high]}")
        low, high = _pair(self, "aspect_ratio")
        if not 0.0 < low <= high:
            raise ConfigError(f"views.aspect_ratio must satisfy 0 < min <= max, got {[low, high]}")
        for key in ("hflip", "blur", "min_foreground", "colour_jitter"):
            _in_range(self, key, 0.0, 1.0)
        _in_range(self, "intensity_jitter", 0.0, 1.0, include_high=False)
        _in_range(self, "background_level", 0.0, 1.0, include_high=False)
        if not self.std > 0.0:
            raise ConfigError(f"views.std must be > 0, got {self.std}")
        if not math.isfinite(self.mean):
            raise ConfigError(f"views.mean must be a finite number, got {self.mean}")
        return self


def _pair(config: ViewConfig, key: str) -> tuple[float, float]:
    value = getattr(config, key)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"views.{key} must be a list of two numbers [min, max], got {value!r}") from None
    return low, high


def _in_range(config: ViewConfig, key: str, low: float, high: float, include_high: bool = True) -> None:
    value = getattr(config, key)
    ok = low <= value <= high if include_high else low <= value < high
    if not ok:
        bracket = "]" if include_high else ")"
        raise ConfigError(f"views.{key} must be in [{low}, {high}{bracket}, got {value}")


def match_channels(image: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``image`` ``[..., C, H, W]`` with ``in_chans`` channels: 1 -> 3 repeats, 3 -> 1 takes BT.601
    luminance."""
    channels = image.shape[-3]
    if channels == in_chans:
        return image
    if channels == 1 and in_chans == 3:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    if channels == 3 and in_chans == 1:
        weights = image.new_tensor(LUMINANCE).view(3, 1, 1)
        return (image * weights).sum(dim=-3, keepdim=True)
    raise ConfigError(
        f"cannot turn a {channels}-channel image into {in_chans} channels "
        "(only 1 -> 3 by repetition and 3 -> 1 by luminance are supported)"
    )


def is_colour(image: torch.Tensor) -> bool:
    """True when ``image`` ``[C, H, W]`` has 3 channels that differ somewhere (beyond 8-bit rounding)."""
    if image.shape[-3] != 3:
        return False
    spread = image.amax(dim=-3) - image.amin(dim=-3)
    return bool(spread.max() > COLOUR_TOLERANCE)


def as_image(image: torch.Tensor) -> torch.Tensor:
    """``image`` as float32 ``[C, H, W]`` in [0, 1] (uint8 divided by 255, a 2D image given one channel)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"views take a torch.Tensor image, got {type(image).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3:
        raise ValueError(f"views take an image [C, H, W], got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float()


def _uniform(u: float, low: float, high: float) -> float:
    return low + (high - low) * u


def _log_uniform(u: float, low: float, high: float) -> float:
    return math.exp(_uniform(u, math.log(low), math.log(high)))


class _Augmenter:
    """Crop + flip + jitter + blur + normalise with parameters drawn from a generator."""

    def __init__(self, config: ViewConfig, in_chans: int):
        if not isinstance(config, ViewConfig):
            raise ConfigError(f"views must be a ViewConfig, got {type(config).__name__}")
        self.config = config.check()
        if in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
        self.in_chans = in_chans

    def foreground_table(self, image: torch.Tensor) -> torch.Tensor | None:
        """Summed-area table ``[H + 1, W + 1]`` of the foreground mask, or None when not needed."""
        if self.config.min_foreground <= 0.0:
            return None
        foreground = image.amax(dim=0) > self.config.background_level
        table = torch.zeros(image.shape[-2] + 1, image.shape[-1] + 1, dtype=torch.int64)
        table[1:, 1:] = foreground.cumsum(0).cumsum(1)
        return table

    def crop_box(
        self,
        height: int,
        width: int,
        scale: list[float],
        table: torch.Tensor | None,
        generator: torch.Generator,
    ) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of a random resized crop, intensity-aware when ``table`` is given."""
        draws = torch.rand(CROP_ATTEMPTS, 4, generator=generator).tolist()
        ratio_low, ratio_high = self.config.aspect_ratio
        boxes = []
        for u_area, u_ratio, u_top, u_left in draws:
            area = height * width * _uniform(u_area, scale[0], scale[1])
            ratio = _log_uniform(u_ratio, ratio_low, ratio_high)
            w = min(max(round(math.sqrt(area * ratio)), 1), width)
            h = min(max(round(math.sqrt(area / ratio)), 1), height)
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            boxes.append((top, left, h, w))
            if table is None:
                return boxes[0]
        box = torch.tensor(boxes)
        top, left, h, w = box.unbind(1)
        inside = table[top + h, left + w] - table[top, left + w] - table[top + h, left] + table[top, left]
        fraction = inside.double() / (h * w).double()
        accepted = (fraction >= self.config.min_foreground).nonzero()
        index = int(accepted[0, 0]) if len(accepted) else int(fraction.argmax())
        return boxes[index]

    def __call__(
        self,
        image: torch.Tensor,
        table: torch.Tensor | None,
        size: int,
        scale: list[float],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """One augmented, normalised view ``[in_chans, size, size]`` of ``image`` ``[C, H, W]``."""
        cfg = self.config
        top, left, h, w = self.crop_box(image.shape[-2], image.shape[-1], scale, table, generator)
        # flip, jitter?, brightness, contrast, saturation, hue, blur?, sigma: drawn up front, always 8.
        u_flip, u_jitter, u_bright, u_contrast, u_sat, u_hue, u_blur, u_sigma = torch.rand(
            8, generator=generator
        ).tolist()
        crop = image[:, top : top + h, left : left + w]
        if crop.shape[0] > self.in_chans:
            crop = match_channels(crop, self.in_chans)
        view = nnf.interpolate(
            crop.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        view = match_channels(view, self.in_chans).contiguous()
        if u_flip < cfg.hflip:
            view = view.flip(-1)
        if u_jitter < JITTER_PROBABILITY:
            strength = cfg.intensity_jitter
            if strength > 0:
                brightness = _uniform(u_bright, 1.0 - strength, 1.0 + strength)
                contrast = _uniform(u_contrast, 1.0 - strength, 1.0 + strength)
                view = (view * brightness).clamp_(0.0, 1.0)
                mean = view.mean()
                view = ((view - mean) * contrast + mean).clamp_(0.0, 1.0)
            if cfg.colour_jitter > 0 and is_colour(view):
                view = _colour_jitter(view, u_sat, u_hue, cfg.colour_jitter)
        if u_blur < cfg.blur:
            sigma = _uniform(u_sigma, 0.1, 2.0) * size / 224.0
            radius = min(max(math.ceil(3.0 * sigma), 1), size - 1)
            view = tvf.gaussian_blur(view, [2 * radius + 1] * 2, [sigma, sigma])
        return view.sub_(cfg.mean).div_(cfg.std)


def _colour_jitter(view: torch.Tensor, u_sat: float, u_hue: float, strength: float) -> torch.Tensor:
    """Scale (saturation) and rotate (hue) the chroma of an RGB ``view``, keeping its luminance."""
    saturation = _uniform(u_sat, 1.0 - strength, 1.0 + strength)
    angle = _uniform(u_hue, -strength / 2, strength / 2) * 2.0 * math.pi
    c, s = saturation * math.cos(angle), saturation * math.sin(angle)
    chroma = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)
    matrix = (_YIQ_INV @ chroma @ _YIQ).to(view.dtype)
    return torch.einsum("ij,jhw->ihw", matrix, view).clamp_(0.0, 1.0)


class CropView:
    """MAE's view: one intensity-aware random resized crop, flipped, jittered and normalised.

    ``view(image, generator) -> {"image": float [in_chans, size, size]}``.
    """

    def __init__(self, config: ViewConfig, size: int, in_chans: int):
        if size < 1:
            raise ConfigError(f"crop size must be >= 1, got {size}")
        self.augment = _Augmenter(config, in_chans)
        self.config = self.augment.config
        self.size = size
        self.in_chans = in_chans

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        image = as_image(image)
        table = self.augment.foreground_table(image)
        return {"image": self.augment(image, table, self.size, self.config.crop_scale, generator)}


class MultiCropView:
    """DINOv2/iBOT's view: global and local crops, and block-wise iBOT masks for the global crops.

    ``view(image, generator)`` returns

    - ``"global_crops"``: float ``[n_global, in_chans, global_size, global_size]`` (``crop_scale``),
    - ``"local_crops"``: float ``[n_local, in_chans, local_size, local_size]`` (``local_crop_scale``),
      shape ``[0, in_chans, L, L]`` when ``n_local`` is 0,
    - ``"ibot_masks"``: bool ``[n_global, (global_size // patch_size) ** 2]``, row-major patch grid.

    Each global crop is masked with probability ``mask_probability``; a masked crop hides a fraction of
    its patches drawn uniformly in ``mask_ratio`` (rounded to whole patches), made of random rectangles of
    patches (aspect ratio 0.3-3.3, as in BEiT/iBOT); when no further rectangle fits, the last few patches
    are picked one by one, so the count is exact. An unmasked crop has an all-False row.
    """

    def __init__(
        self,
        config: ViewConfig,
        global_size: int,
        local_size: int,
        n_global: int,
        n_local: int,
        in_chans: int,
        patch_size: int,
        mask_ratio: list[float] | tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
    ):
        if patch_size < 1:
            raise ConfigError(f"patch_size must be >= 1, got {patch_size}")
        for key, value in (("global_size", global_size), ("local_size", local_size)):
            if value < patch_size or value % patch_size:
                raise ConfigError(
                    f"{key} must be a positive multiple of the patch size {patch_size}, got {value}"
                )
        if n_global < 1:
            raise ConfigError(f"n_global must be >= 1, got {n_global}")
        if n_local < 0:
            raise ConfigError(f"n_local must be >= 0, got {n_local}")
        try:
            ratio_low, ratio_high = (float(v) for v in mask_ratio)
        except (TypeError, ValueError):
            raise ConfigError(f"mask_ratio must be two numbers [min, max], got {mask_ratio!r}") from None
        if not 0.0 <= ratio_low <= ratio_high <= 1.0:
            raise ConfigError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {[ratio_low, ratio_high]}")
        if not 0.0 <= mask_probability <= 1.0:
            raise ConfigError(f"mask_probability must be in [0, 1], got {mask_probability}")
        self.augment = _Augmenter(config, in_chans)
        self.config = self.augment.config
        self.global_size, self.local_size = global_size, local_size
        self.n_global, self.n_local = n_global, n_local
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.grid = global_size // patch_size
        self.mask_ratio = (ratio_low, ratio_high)
        self.mask_probability = mask_probability

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        image = as_image(image)
        table = self.augment.foreground_table(image)
        cfg = self.config
        global_crops = torch.stack(
            [
                self.augment(image, table, self.global_size, cfg.crop_scale, generator)
                for _ in range(self.n_global)
            ]
        )
        if self.n_local:
            local_crops = torch.stack(
                [
                    self.augment(image, table, self.local_size, cfg.local_crop_scale, generator)
                    for _ in range(self.n_local)
                ]
            )
        else:
            local_crops = torch.empty(0, self.in_chans, self.local_size, self.local_size)
        masks = torch.stack([self.mask(generator) for _ in range(self.n_global)])
        return {"global_crops": global_crops, "local_crops": local_crops, "ibot_masks": masks}

    def mask(self, generator: torch.Generator) -> torch.Tensor:
        """One global crop's iBOT mask, bool ``[grid * grid]``."""
        grid = self.grid
        u_masked, u_ratio = torch.rand(2, generator=generator).tolist()
        mask = torch.zeros(grid, grid, dtype=torch.bool)
        if u_masked >= self.mask_probability:
            return mask.flatten()
        target = round(_uniform(u_ratio, *self.mask_ratio) * grid * grid)
        return block_mask(grid, grid, target, generator).flatten()


def block_mask(height: int, width: int, target: int, generator: torch.Generator) -> torch.Tensor:
    """A bool ``[height, width]`` mask with exactly ``target`` True cells, made of random rectangles."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    target = min(max(target, 0), height * width)
    count, failures = 0, 0
    while count < target and failures < CROP_ATTEMPTS:
        remaining = target - count
        u_area, u_ratio, u_top, u_left = torch.rand(4, generator=generator).tolist()
        area = _uniform(u_area, min(BLOCK_MIN_PATCHES, remaining), remaining)
        ratio = _log_uniform(u_ratio, *BLOCK_ASPECT)
        h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if not (1 <= h <= height and 1 <= w <= width):
            failures += 1
            continue
        top = min(int(u_top * (height - h + 1)), height - h)
        left = min(int(u_left * (width - w + 1)), width - w)
        block = mask[top : top + h, left : left + w]
        added = h * w - int(block.sum())
        if 0 < added <= remaining:
            block.fill_(True)
            count += added
            failures = 0
        else:
            failures += 1
    if count < target:
        free = (~mask).flatten().nonzero().flatten()
        pick = free[torch.randperm(len(free), generator=generator)[: target - count]]
        mask.view(-1)[pick] = True
    return mask
