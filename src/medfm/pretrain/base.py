"""What a pretraining method is to the training engine, and the registry of methods.

A method is an ``nn.Module`` that owns its encoder (and decoder, heads, teacher ...). The engine only

- builds per-sample views with :meth:`PretrainMethod.views` (all randomness from the generator it is given,
  so a resumed run draws the same crops and masks),
- calls ``method(batch)`` and back-propagates ``outputs["loss"]``; other entries are logged,
- calls :meth:`PretrainMethod.after_step` after each optimiser step (a teacher's EMA update, say),
- runs the method's :meth:`PretrainMethod.hooks` (DINO freezes its heads' last layers at first), after
  :meth:`PretrainMethod.check_schedule` has accepted the run's length.

:attr:`PretrainMethod.encoder_prefix` names where the encoder's weights sit in the method's state dict, so
a bundle of the whole method loads into a plain encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from medfm.engine.hooks import Hook
from medfm.registry import Registry

View = Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]]


class PretrainMethod(nn.Module):
    name: ClassVar[str]
    encoder_prefix: ClassVar[str]  # e.g. "encoder." (MAE) or "teacher_encoder." (DINO)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss": scalar tensor with grad, **logs}``; logs are detached 0-d tensors or floats."""
        raise NotImplementedError

    def views(self) -> View:
        """The per-sample transform: ``view(image [C, H, W] float in [0, 1], generator) -> batch entries``."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` (0-based) of ``total_steps``; nothing by default."""

    def hooks(self) -> list[Hook]:
        """Training-loop hooks the method needs; none by default."""
        return []

    def check_schedule(self, steps: int, steps_per_epoch: float) -> None:
        """Raise :class:`~medfm.errors.ConfigError` if the settings do not suit a run of ``steps`` optimiser
        steps, ``steps_per_epoch`` to a pass over the data; any length suits by default."""

    def export_config(self) -> dict[str, Any]:
        """Settings a bundle records about the method (for its model card and for reloading)."""
        return {}


METHODS: Registry[type[PretrainMethod]] = Registry("pretraining method")
