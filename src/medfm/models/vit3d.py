"""3D Vision Transformer for volumes ``[B, C, D, H, W]``, with the token interface of
:class:`medfm.models.vit.ViT`.

Patches are boxes (``patch_size=(4, 16, 16)`` for thick slices, ``16`` for cubes) embedded by a Conv3d.
Position embeddings are learned for the grid of ``img_size`` and resampled trilinearly when a volume of
another size comes in, so one model takes any size that the patch size divides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint


def to_3tuple(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    """``16 -> (16, 16, 16)``; a sequence must have three positive entries."""
    values = (int(value),) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{what} must be a positive int or three positive ints (D, H, W), got {value!r}")
    return values  # type: ignore[return-value]


class PatchEmbed3d(nn.Module):
    """Non-overlapping box patches to tokens: ``[B, C, D, H, W] -> [B, N, embed_dim]``, N in D, H, W order."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 96,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
    ):
        super().__init__()
        self.img_size = to_3tuple(img_size, "img_size")
        self.patch_size = to_3tuple(patch_size, "patch_size")
        self.check_size(self.img_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = math.prod(self.grid_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def check_size(self, spatial_shape: Sequence[int]) -> None:
        shape = tuple(spatial_shape)
        if len(shape) != 3 or any(s < p or s % p for s, p in zip(shape, self.patch_size)):
            raise ValueError(
                f"volume size {shape} (D, H, W) must be a multiple of the patch size {self.patch_size} "
                "along every axis; crop or pad the volume"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected a volume batch [B, C, D, H, W], got shape {tuple(x.shape)}")
        self.check_size(x.shape[2:])
        return self.proj(x).flatten(2).transpose(1, 2)


def resample_pos_embed_3d(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int],
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Trilinear resampling of ``[1, prefix + prod(old_grid), D]`` to ``new_grid``; prefix slots are kept."""
    new_grid, old_grid = tuple(new_grid), tuple(old_grid)
    if new_grid == old_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if grid.shape[1] != math.prod(old_grid):
        slots, expected = grid.shape[1], math.prod(old_grid)
        raise ValueError(f"position embedding has {slots} patch slots, not {expected} for grid {old_grid}")
    dim = grid.shape[-1]
    dtype = grid.dtype
    grid = grid.reshape(1, *old_grid, dim).permute(0, 4, 1, 2, 3).float()
    grid = F.interpolate(grid, size=new_grid, mode="trilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 4, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)


class ViT3d(nn.Module):
    """A plain ViT over 3D patches: class token, learned position embeddings, timm ``Block`` s, final norm.

    ``forward(x)`` returns the pooled feature ``[B, embed_dim]``: the class token (``global_pool="token"``)
    or the mean of the patch tokens (``global_pool="avg"``).
    """

    spatial_dims = 3

    def __init__(
        self,
        img_size: int | Sequence[int] = 96,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if not dynamic_img_size:
            raise ValueError("ViT3d always resamples its position embeddings; dynamic_img_size must be True")
        if num_classes:
            raise ValueError("ViT3d is an encoder without a classification head; num_classes must be 0")
        self.embed_dim = self.num_features = embed_dim
        self.in_chans = in_chans
        self.num_prefix_tokens = 1
        self.global_pool = global_pool
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate or drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as in timm
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    init_values=init_values,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rate,
                    norm_layer=norm_layer,
                )
                for rate in rates
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """timm's default ViT init: truncated normal (std 0.02) for embeddings and linear layers, zero biases.

        Norms, the patch projection and layer scales (``init_values``) keep their own initialisation."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.patch_embed.patch_size

    def grid_size(self, spatial_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Patches along D, H and W for an input of spatial shape ``(D, H, W)``."""
        return tuple(s // p for s, p in zip(spatial_shape, self.patch_size))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _pos_embed_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        return resample_pos_embed_3d(self.pos_embed, grid, self.patch_embed.grid_size, self.num_prefix_tokens)

    def tokenize(
        self,
        x: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patch-embed ``x`` ``[B, C, D, H, W]``; put ``mask_token`` where ``token_mask`` ``[B, N]`` is True;
        add position embeddings; prepend the class token. Returns ``[B, 1 + N, embed_dim]``."""
        tokens = self.patch_embed(x)  # [B, N, D]
        if token_mask is not None:
            if mask_token is None:
                raise ValueError("token_mask given without a mask_token")
            mask = token_mask.reshape(tokens.shape[0], tokens.shape[1], 1)
            tokens = torch.where(mask, mask_token.to(tokens.dtype).reshape(1, 1, -1), tokens)
        pos = self._pos_embed_for(self.grid_size(tuple(x.shape[2:])))
        tokens = tokens + pos[:, self.num_prefix_tokens :]
        cls = (self.cls_token + pos[:, : self.num_prefix_tokens]).expand(tokens.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, tokens], dim=1))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the transformer blocks and the final norm over tokens from :meth:`tokenize`."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                tokens = checkpoint(block, tokens, use_reentrant=False)
        else:
            tokens = self.blocks(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, ``[B, 1 + N, embed_dim]``."""
        return self.encode_tokens(self.tokenize(x))

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        if self.global_pool == "avg":
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return tokens[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
