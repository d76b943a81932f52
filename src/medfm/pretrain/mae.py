"""Masked autoencoder pretraining (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022).

The encoder sees only a random subset of the patch tokens (plus its class token); a small transformer
decoder gets the encoded visible tokens back in place, a learned mask token at every hidden position, and
predicts the pixels of the hidden patches. The loss is the mean squared error over hidden patches only,
by default against per-patch normalised pixels (``norm_pix_loss``), which gives better features.

Works for 2D (``[B, C, H, W]``) and 3D (``[B, C, D, H, W]``) encoders alike: anything with ``patch_size``
(a 2- or 3-tuple), ``tokenize``, ``encode_tokens``, ``num_prefix_tokens``, ``embed_dim`` and ``in_chans``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from medfm.errors import ConfigError
from medfm.pretrain.base import METHODS, PretrainMethod, View

if TYPE_CHECKING:
    from medfm.pretrain.views import ViewConfig


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75  # share of patch tokens hidden from the encoder
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True  # regress per-patch normalised pixels


_layer_norm = partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Fixed sine-cosine position embeddings ``[prod(grid), dim]`` for a 2D or 3D patch grid.

    Each axis gets an equal, even share of the channels (half sines, half cosines of the patch index at
    geometrically spaced frequencies); channels left over when ``dim`` does not split evenly are zero.
    Rows follow the row-major order of the patch tokens.
    """
    per_axis = (dim // len(grid)) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"embedding dim {dim} is too small for a {len(grid)}D grid")
    half = per_axis // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    parts = []
    for axis in coords:
        angles = axis.reshape(-1, 1) * omega  # [N, half]
        parts += [angles.sin(), angles.cos()]
    embed = torch.cat(parts, dim=1)
    if embed.shape[1] < dim:
        embed = torch.nn.functional.pad(embed, (0, dim - embed.shape[1]))
    return embed.float()


class MAE(PretrainMethod):
    """MAE around a ViT encoder; ``forward(batch)`` takes ``batch["image"]`` ``[B, C, *spatial]``.

    Args:
        encoder: a medfm ViT (2D or 3D), trained in place.
        config: the MAE settings.
        image_size: side of the training crops, or one size per spatial axis (``(D, H, W)``). The decoder's
            position embeddings are built for its patch grid; another input size still works (the fixed
            embeddings are then recomputed for that grid).
        views: crop settings for :meth:`views` (defaults of :class:`ViewConfig` when None).
    """

    name = "mae"
    encoder_prefix = "encoder."

    def __init__(
        self,
        encoder: nn.Module,
        config: MAEConfig,
        image_size: int | Sequence[int],
        views: ViewConfig | None = None,
    ):
        super().__init__()
        _check_config(config)
        for attr in ("patch_size", "tokenize", "encode_tokens", "num_prefix_tokens", "embed_dim", "in_chans"):
            if not hasattr(encoder, attr):
                raise ConfigError(f"MAE needs a ViT-style encoder; {type(encoder).__name__} has no {attr!r}")
        self.encoder = encoder
        self.config = config
        self.image_size = image_size
        self.view_config = views
        self.patch_size: tuple[int, ...] = tuple(encoder.patch_size)
        if len(self.patch_size) not in (2, 3):
            raise ConfigError(f"MAE supports 2D or 3D patches, got patch_size {self.patch_size}")
        d = len(self.patch_size)
        sizes = (int(image_size),) * d if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(sizes) != d or any(s < p or s % p for s, p in zip(sizes, self.patch_size)):
            raise ConfigError(f"image_size {image_size} is no multiple of the patch size {self.patch_size}")
        self.grid = tuple(s // p for s, p in zip(sizes, self.patch_size))
        if self._num_keep(math.prod(self.grid)) >= math.prod(self.grid):
            raise ConfigError(
                f"mae.mask_ratio {config.mask_ratio} hides no patch of the {self.grid} patch grid; "
                "raise it or the image size"
            )
        self.num_prefix = int(encoder.num_prefix_tokens)
        patch_dim = math.prod(self.patch_size) * encoder.in_chans

        dim = config.decoder_dim
        self.decoder_embed = nn.Linear(encoder.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_blocks = nn.Sequential(
            *(
                Block(dim, config.decoder_heads, qkv_bias=True, norm_layer=_layer_norm)
                for _ in range(config.decoder_depth)
            )
        )
        self.decoder_norm = _layer_norm(dim)
        self.decoder_pred = nn.Linear(dim, patch_dim)
        # Fixed, so not saved: rebuilt from the grid; prefix tokens get zero position.
        self.register_buffer("decoder_pos_embed", self._decoder_pos_embed(self.grid), persistent=False)
        self._pos_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._init_decoder()

    # -- building blocks -------------------------------------------------------------------------------

    def _init_decoder(self) -> None:
        def init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            part.apply(init)
        nn.init.normal_(self.mask_token, std=0.02)

    def _decoder_pos_embed(self, grid: tuple[int, ...]) -> torch.Tensor:
        embed = sincos_pos_embed(self.config.decoder_dim, grid)
        return torch.cat([embed.new_zeros(self.num_prefix, embed.shape[1]), embed]).unsqueeze(0)

    def _num_keep(self, num_patches: int) -> int:
        # The small epsilon stops float error (10 * (1 - 0.9) = 0.99999...) from dropping one more token.
        return max(1, int(num_patches * (1 - self.config.mask_ratio) + 1e-6))

    def _grid_of(self, imgs: torch.Tensor) -> tuple[int, ...]:
        spatial = tuple(imgs.shape[2:])
        if len(spatial) != len(self.patch_size):
            raise ValueError(
                f"expected images [B, C, {len(self.patch_size)} spatial dims], got shape {tuple(imgs.shape)}"
            )
        if any(s % p for s, p in zip(spatial, self.patch_size)):
            raise ValueError(f"image size {spatial} is not a multiple of patch size {self.patch_size}")
        return tuple(s // p for s, p in zip(spatial, self.patch_size))

    # -- patches ---------------------------------------------------------------------------------------

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[B, C, *spatial]`` -> ``[B, N, prod(patch_size) * C]``; patches in row-major grid order, each
        flattened with the channel fastest (the layout :meth:`forward_decoder` predicts)."""
        grid = self._grid_of(imgs)
        b, c = imgs.shape[:2]
        d = len(grid)
        split = [b, c]
        for g, p in zip(grid, self.patch_size):
            split += [g, p]
        x = imgs.reshape(split)  # [B, C, g1, p1, g2, p2, ...]
        order = [0, *range(2, 2 + 2 * d, 2), *range(3, 3 + 2 * d, 2), 1]  # B, g..., p..., C
        return x.permute(order).reshape(b, math.prod(grid), -1)

    def unpatchify(self, patches: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``[B, N, prod(patch_size) * C]`` -> ``[B, C, *spatial_shape]``."""
        spatial_shape = tuple(spatial_shape)
        d = len(self.patch_size)
        if len(spatial_shape) != d or any(s % p for s, p in zip(spatial_shape, self.patch_size)):
            raise ValueError(f"spatial shape {spatial_shape} does not fit patch size {self.patch_size}")
        grid = tuple(s // p for s, p in zip(spatial_shape, self.patch_size))
        b, n, patch_dim = patches.shape
        c, rest = divmod(patch_dim, math.prod(self.patch_size))
        if n != math.prod(grid) or rest:
            raise ValueError(f"patches {tuple(patches.shape)} do not match grid {grid} x {self.patch_size}")
        x = patches.reshape(b, *grid, *self.patch_size, c)
        order = [0, 1 + 2 * d]  # B, C, then g1, p1, g2, p2, ...
        for i in range(d):
            order += [1 + i, 1 + d + i]
        return x.permute(order).reshape(b, c, *spatial_shape)

    # -- masking ---------------------------------------------------------------------------------------

    def _mask_indices(self, b: int, n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Per-sample random permutation: ``ids_keep [B, K]``, ``mask [B, N]`` (1 hidden), ``ids_restore``."""
        noise = torch.rand(b, n, device=device)  # global RNG, so a resumed run draws the same masks
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        num_keep = self._num_keep(n)
        mask = (ids_restore >= num_keep).float()
        return ids_shuffle[:, :num_keep], mask, ids_restore

    def random_masking(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random ``1 - mask_ratio`` share of ``tokens`` ``[B, N, D]`` per sample.

        Returns ``kept [B, K, D]`` (in random order), ``mask [B, N]`` (float, 1 = hidden) and
        ``ids_restore [B, N]``: position ``i`` of the original sequence is entry ``ids_restore[:, i]`` of
        ``cat([kept, hidden])`` in shuffled order.
        """
        b, n, dim = tokens.shape
        ids_keep, mask, ids_restore = self._mask_indices(b, n, tokens.device)
        kept = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        return kept, mask, ids_restore

    # -- model -----------------------------------------------------------------------------------------

    def forward_encoder(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a random visible subset of patches; returns ``latent [B, prefix + K, D]``, ``mask [B, N]``
        (1 = hidden) and ``ids_restore [B, N]`` (see :meth:`random_masking`).

        Position embeddings are added before masking; the prefix (class) tokens are always kept.
        """
        self._grid_of(imgs)
        tokens = self.encoder.tokenize(imgs)
        b, total, dim = tokens.shape
        p = self.num_prefix
        ids_keep, mask, ids_restore = self._mask_indices(b, total - p, tokens.device)
        # One gather picks the prefix tokens and the kept patch tokens together.
        prefix_ids = torch.arange(p, device=tokens.device).expand(b, p)
        index = torch.cat([prefix_ids, ids_keep + p], dim=1)
        visible = tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, dim))
        return self.encoder.encode_tokens(visible), mask, ids_restore

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """Predict every patch's pixels ``[B, N, prod(patch_size) * C]`` from the encoded visible tokens.

        ``grid`` is the patch grid of the input (default: the training grid); the fixed position
        embeddings are recomputed for a grid other than the one the model was built for.
        """
        x = self.decoder_embed(latent)
        b, visible, dim = x.shape
        p = self.num_prefix
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, p + n - visible, dim)], dim=1)
        # Put tokens back in place: patch i is at position p + ids_restore[i] of [prefix, kept, masks].
        prefix_ids = torch.arange(p, device=x.device).expand(b, p)
        index = torch.cat([prefix_ids, ids_restore + p], dim=1)
        x = x.gather(1, index.unsqueeze(-1).expand(-1, -1, dim))
        x = x + self._pos_embed_for(tuple(grid) if grid is not None else self.grid, n)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, p:])

    def _pos_embed_for(self, grid: tuple[int, ...], num_patches: int) -> torch.Tensor:
        if math.prod(grid) != num_patches:
            raise ValueError(f"{num_patches} patch tokens do not fill a {grid} grid; pass the input's grid")
        if grid == self.grid:
            return self.decoder_pos_embed
        cached = self._pos_cache.get(grid)
        if cached is None or cached.device != self.decoder_pos_embed.device:
            cached = self._decoder_pos_embed(grid).to(self.decoder_pos_embed.device)
            self._pos_cache = {grid: cached}  # keep only the latest other grid
        return cached

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over hidden patches only (``mask`` 1), per-patch normalised if configured."""
        target = self._target(imgs)
        loss = (pred - target).square().mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def _target(self, imgs: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def _run(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs)
        return self.forward_decoder(latent, ids_restore, self._grid_of(imgs)), mask

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        imgs = batch["image"]
        pred, mask = self._run(imgs)
        n = mask.shape[1]
        return {"loss": self.forward_loss(imgs, pred, mask), "mask_ratio": 1 - self._num_keep(n) / n}

    # -- engine hooks and helpers ----------------------------------------------------------------------

    def views(self) -> View:
        from medfm.pretrain.views import CropView, ViewConfig

        return CropView(self.view_config or ViewConfig(), self.image_size, self.encoder.in_chans)

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For figures: ``(reconstruction, mask_image)``, both shaped like ``imgs``.

        ``reconstruction`` is the decoder's prediction of every patch (visible ones included); with
        ``norm_pix_loss`` it is mapped back to pixels with each patch's mean and std taken from ``imgs``,
        the usual MAE display (so hidden patches show predicted structure at the true brightness).
        ``mask_image`` is 1 on hidden pixels; ``imgs * (1 - m) + reconstruction * m`` pastes the visible
        patches back.
        """
        pred, mask = self._run(imgs)
        if self.config.norm_pix_loss:
            target = self.patchify(imgs)
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
        spatial = tuple(imgs.shape[2:])
        mask_patches = mask.to(pred.dtype).unsqueeze(-1).expand(-1, -1, pred.shape[-1])
        return self.unpatchify(pred, spatial), self.unpatchify(mask_patches, spatial)


def _check_config(config: MAEConfig) -> None:
    if not 0 < config.mask_ratio < 1:
        raise ConfigError(f"mae.mask_ratio must be between 0 and 1 (exclusive), got {config.mask_ratio}")
    if config.decoder_dim < 1 or config.decoder_heads < 1 or config.decoder_depth < 1:
        raise ConfigError(
            "mae.decoder_dim, decoder_heads and decoder_depth must be >= 1, got "
            f"{config.decoder_dim}, {config.decoder_heads}, {config.decoder_depth}"
        )
    if config.decoder_dim % config.decoder_heads:
        raise ConfigError(
            f"mae.decoder_dim ({config.decoder_dim}) must be divisible by "
            f"mae.decoder_heads ({config.decoder_heads})"
        )


METHODS.register("mae", MAE)
