"""Named hooks: how later stages (continual-learning strategies, evaluation, logging) plug into the loop.

The trainer calls every hook at each event, in the order given. A hook changes training by returning a new
batch (``on_batch``: replay), new outputs (``on_outputs``: add a penalty to ``outputs["loss"]``, as EWC or
LwF do) or by acting on gradients (``after_backward``: A-GEM). What a hook returns from
:meth:`Hook.state_dict` is saved in every checkpoint and given back by :meth:`Hook.load_state_dict` on
resume (tensors go to safetensors, the rest to JSON).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from medfm.engine.trainer import Trainer


class Hook:
    name: str = "hook"

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_batch(self, trainer: Trainer, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def on_outputs(
        self, trainer: Trainer, batch: dict[str, Any], outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return outputs

    def after_backward(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: Trainer, directory: Any) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def split_hook_states(hooks: list[Hook]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every hook's state, tensors keyed ``<hook>/<key>`` and the JSON-safe rest keyed by hook name."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for hook in hooks:
        for key, value in hook.state_dict().items():
            if torch.is_tensor(value):
                tensors[f"{hook.name}/{key}"] = value
            else:
                plain.setdefault(hook.name, {})[key] = value
    return tensors, plain


def restore_hook_states(hooks: list[Hook], tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    for hook in hooks:
        state = dict(plain.get(hook.name, {}))
        prefix = f"{hook.name}/"
        state.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        hook.load_state_dict(state)
