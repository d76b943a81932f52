"""Tensors ready for a safetensors file, shared by release bundles and training checkpoints."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medfm.errors import MedfmError


def storable(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no two sharing storage (safetensors refuses shared tensors)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise MedfmError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()
            storage = tensor.untyped_storage()
        if tensor.numel():
            seen.add(storage.data_ptr())
        out[str(key)] = tensor
    return out
