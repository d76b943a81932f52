"""2D Vision Transformer: timm's ``VisionTransformer`` plus the token interface medfm's methods share.

MAE drops patch tokens and iBOT replaces some by a mask token; both need the steps of timm's
``forward_features`` one at a time. :meth:`ViT.tokenize` and :meth:`ViT.encode_tokens` give exactly that,
and the 3D encoder offers the same two methods, so a method written once runs on both.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer


class ViT(VisionTransformer):
    """A timm ViT that takes any image size (position embeddings resampled on the fly) and has no head.

    ``forward(x)`` returns the pooled feature ``[B, embed_dim]`` (class token by default).
    """

    spatial_dims = 2

    def __init__(self, **kwargs):
        kwargs.setdefault("num_classes", 0)
        kwargs.setdefault("dynamic_img_size", True)
        super().__init__(**kwargs)
        self.in_chans = self.patch_embed.proj.in_channels

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.patch_size)

    def grid_size(self, spatial_shape: tuple[int, ...]) -> tuple[int, int]:
        """Patches along H and W for an input of spatial shape ``(H, W)``."""
        return tuple(s // p for s, p in zip(spatial_shape, self.patch_size))

    def tokenize(
        self,
        x: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patch-embed ``x`` ``[B, C, H, W]``; put ``mask_token`` where ``token_mask`` ``[B, N]`` is True;
        add position embeddings; prepend the prefix (class) tokens. Returns ``[B, prefix + N, D]``."""
        tokens = self.patch_embed(x)  # [B, H', W', D]: timm keeps the grid when dynamic_img_size is on
        if not self.dynamic_img_size:
            raise ValueError("ViT.tokenize needs dynamic_img_size=True (the default for medfm encoders)")
        if token_mask is not None:
            if mask_token is None:
                raise ValueError("token_mask given without a mask_token")
            grid_mask = token_mask.reshape(*tokens.shape[:3], 1)
            tokens = torch.where(grid_mask, mask_token.to(tokens.dtype), tokens)
        tokens = self._pos_embed(tokens)
        return self.norm_pre(self.patch_drop(tokens))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the transformer blocks and the final norm over tokens from :meth:`tokenize`."""
        return self.norm(self.blocks(tokens))
