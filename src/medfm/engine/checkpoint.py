"""Training checkpoints without pickle: tensors in safetensors files, everything else in JSON.

A checkpoint is a folder ``step-000200/``::

    model.safetensors       the model's state dict
    ema.safetensors         the EMA model's state dict (when EMA is on)
    optimizer.safetensors   optimiser tensors, keyed "<param index>/<name>"
    rng-rank<R>.safetensors each rank's torch CPU (and CUDA) generator states
    rng-rank<R>.json        each rank's Python and NumPy generator states
    hooks.safetensors       tensors hooks asked to keep, keyed "<hook>/<name>"
    state.json              step, data position, optimiser hyper-parameters and scalars, hooks' other state

It is written to ``step-000200.tmp/`` and renamed when complete, so a run killed while saving leaves the
previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medfm.errors import MedfmError
from medfm.tensor_files import storable

STATE = "state.json"


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def latest_checkpoint(root: Path) -> Path | None:
    """The completed checkpoint with the highest step under ``root`` (None if there is none)."""
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE).is_file() and p.suffix != ".tmp"]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(storable(tensors), str(path))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors and JSON-safe rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}/{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in rest["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states: torch ones as tensors, Python's and NumPy's as JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = value
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def staging_dir(directory: Path) -> Path:
    """Where a checkpoint is written before it is complete."""
    return directory.with_name(directory.name + ".tmp")


def write_rank_rng(staging: Path, rank: int) -> None:
    """Each rank saves its own generator states (ranks draw different masks and dropouts)."""
    tensors, plain = rng_state()
    save_tensors(tensors, staging / f"rng-rank{rank}.safetensors")
    (staging / f"rng-rank{rank}.json").write_text(json.dumps(plain))


def write_checkpoint(
    staging: Path,
    directory: Path,
    *,
    model: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    ema: dict[str, torch.Tensor] | None = None,
    hooks: tuple[dict[str, torch.Tensor], dict[str, Any]] = ({}, {}),
) -> Path:
    """Complete the checkpoint in ``staging`` (ranks have written their RNG states) and move it in place."""
    save_tensors(model, staging / "model.safetensors")
    if ema is not None:
        save_tensors(ema, staging / "ema.safetensors")
    opt_tensors, opt_rest = optimizer_to_files(optimizer)
    save_tensors(opt_tensors, staging / "optimizer.safetensors")
    hook_tensors, hook_plain = hooks
    if hook_tensors:
        save_tensors(hook_tensors, staging / "hooks.safetensors")
    (staging / STATE).write_text(json.dumps({**state, "optimizer": opt_rest, "hooks": hook_plain}))
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def read_checkpoint(directory: Path, rank: int = 0) -> dict[str, Any]:
    """Everything a checkpoint holds, with ``rank``'s generator states; tensors on the CPU."""
    if not (directory / STATE).is_file():
        raise MedfmError(f"{directory} is not a complete medfm checkpoint (no {STATE})")
    record = json.loads((directory / STATE).read_text())

    def optional(name: str) -> dict[str, torch.Tensor] | None:
        return load_tensors(directory / name) if (directory / name).is_file() else None

    rng_tensors = optional(f"rng-rank{rank}.safetensors")
    rng_json = directory / f"rng-rank{rank}.json"
    return {
        "state": {k: v for k, v in record.items() if k not in ("optimizer", "hooks")},
        "model": load_tensors(directory / "model.safetensors"),
        "ema": optional("ema.safetensors"),
        "optimizer": optimizer_from_files(
            load_tensors(directory / "optimizer.safetensors"), record["optimizer"]
        ),
        "rng": (rng_tensors, json.loads(rng_json.read_text())) if rng_tensors is not None else None,
        "hooks": (optional("hooks.safetensors") or {}, record["hooks"]),
    }


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest completed checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    done = sorted(
        (p for p in root.glob("step-*") if p.is_dir() and p.suffix != ".tmp"),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
