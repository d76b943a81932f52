"""Release bundles: a trained model as a folder of plain files, and loading that never unpickles.

A bundle is a folder holding

- ``model.safetensors``: the state dict of the whole pretraining method, or of the encoder alone;
- ``config.yaml``: at least ``encoder: {name, in_chans, img_size}``, ``method`` (a name or null) and
  ``encoder_prefix`` (where the encoder's weights sit in the state dict: ``"encoder."`` for MAE,
  ``"teacher_encoder."`` for DINO, ``""`` for an encoder alone), plus anything the caller adds
  (normalisation, data, steps, metrics);
- ``MODEL_CARD.md``: a human-readable description.

Weights are read with safetensors only. Pickle checkpoints (``torch.save`` files) can run arbitrary code
when loaded, so they are refused with instructions to convert them once, in a trusted environment.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from medfm.errors import MedfmError
from medfm.tensor_files import storable

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
CARD_FILE = "MODEL_CARD.md"
SEEN_FILE = "seen_subjects.safetensors"  # the hashed subjects pretraining saw (medfm.data.seen)
EXTRA_FILES = frozenset({SEEN_FILE})
BUNDLE_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, *EXTRA_FILES})

# Where known methods and wrappers keep the encoder, tried in this order when a bundle records no prefix.
KNOWN_PREFIXES = ("encoder.", "teacher_encoder.", "student_encoder.", "backbone.", "module.")
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"})
PATCH_WEIGHT = "patch_embed.proj.weight"
POS_EMBED = "pos_embed"
# Entries of a classification model that an encoder without a head does not have.
HEAD_PREFIXES = ("head.", "fc_norm.")


@dataclass
class Bundle:
    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def encoder_name(self) -> str:
        return self.config["encoder"]["name"]


# ----------------------------------------------------------------------------------------------- reading


def _pickle_error(path: Path, why: str) -> MedfmError:
    return MedfmError(
        f"{path} is a pickle checkpoint ({why}). medfm never unpickles weights: unpickling a file can run "
        "arbitrary code (arbitrary code execution). Convert it once, in a trusted environment, with:\n"
        '    python -c "import torch, safetensors.torch; safetensors.torch.save_file('
        f"torch.load('{path}', weights_only=True), 'model.safetensors')\"\n"
        "(if it holds a whole training checkpoint, save just its model state dict), then load the "
        ".safetensors file."
    )


def _safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file, or None when the file is not laid out as one."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > size - 8 or length > 100_000_000:
            return None
        raw = f.read(length)
    if not raw.startswith(b"{"):
        return None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _check_not_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_error(path, f"its name ends in {path.suffix}")


def _classify_non_safetensors(path: Path) -> MedfmError:
    with path.open("rb") as f:
        start = f.read(4)
    if start == b"PK\x03\x04":
        return _pickle_error(path, "it is a zip archive, the format of torch.save")
    if len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5:
        return _pickle_error(path, f"it starts with a pickle protocol {start[1]} header")
    return MedfmError(f"{path} is not a valid safetensors file (corrupt, truncated or another format)")


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file, read without loading any tensor."""
    path = Path(path)
    _check_not_pickle(path)
    if not path.is_file():
        raise MedfmError(f"weights file not found: {path}")
    header = _safetensors_header(path)
    if header is None:
        raise _classify_non_safetensors(path)
    meta = header.get("__metadata__") or {}
    return dict(meta) if isinstance(meta, dict) else {}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (on the CPU). Pickle checkpoints are refused, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _check_not_pickle(path)
    if not path.is_file():
        raise MedfmError(f"weights file not found: {path}")
    if _safetensors_header(path) is None:
        raise _classify_non_safetensors(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise MedfmError(f"{path} is not a valid safetensors file: {err}") from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise MedfmError(f"cannot read bundle config {path}: {err}") from None
    if not isinstance(config, dict):
        raise MedfmError(f"bundle config {path} must hold a mapping, found {type(config).__name__}")
    return config


def _weights_path(path: Path) -> Path:
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if weights.is_file():
            return weights
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise _pickle_error(
                path / pickles[0], f"the folder has no {WEIGHTS_FILE}, only {', '.join(pickles)}"
            )
        raise MedfmError(f"{path} is not a bundle: it has no {WEIGHTS_FILE}")
    if path.is_file():
        return path
    raise MedfmError(f"bundle not found: {path}")


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle: ``path`` is its folder or its ``.safetensors`` file.

    The config comes from ``config.yaml`` next to the weights; a lone safetensors file without one still
    loads when its metadata names the encoder (``medfm_encoder``).
    """
    path = Path(path)
    weights = _weights_path(path)
    _check_not_pickle(weights)
    config_file = weights.parent / CONFIG_FILE
    if config_file.is_file():
        config = _read_config(config_file)
    else:
        name = read_safetensors_metadata(weights).get("medfm_encoder")
        if not name:
            raise MedfmError(f"{weights} has no {CONFIG_FILE} next to it and no encoder name in its metadata")
        config = {"encoder": {"name": name}, "method": None}
    encoder = config.get("encoder")
    if not isinstance(encoder, dict) or not encoder.get("name"):
        raise MedfmError(f"bundle config of {weights.parent} lacks encoder.name")
    return Bundle(path=weights.parent, config=config, state=read_safetensors(weights))


# ----------------------------------------------------------------------------------------------- writing


def _plain(value: Any, where: str) -> Any:
    """``value`` as YAML-safe builtins: tuples become lists, paths strings, 0-d tensors numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _plain(value.item(), where)
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays, tensors
        return _plain(value.tolist(), where)
    raise MedfmError(
        f"bundle config entry {where} has a value of type {type(value).__name__} that YAML cannot hold"
    )


def default_card(config: Mapping[str, Any]) -> str:
    """A short model card made from the bundle config."""
    encoder = config["encoder"]
    method = config.get("method") or "none recorded"
    lines = [
        f"# {config.get('name') or encoder['name']}",
        "",
        f"- Encoder: `{encoder['name']}`, {encoder.get('in_chans', '?')} input channel(s), "
        f"built for size {encoder.get('img_size', '?')}",
        f"- Pretraining method: {method}",
    ]
    for key in ("data", "steps", "normalize", "metrics"):
        if config.get(key) is not None:
            lines.append(f"- {key.capitalize()}: {config[key]}")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from medfm.models.bundle import load_encoder",
        "",
        'encoder = load_encoder("path/to/this/folder")  # or create_encoder("path/to/this/folder")',
        "```",
        "",
        f"Weights are in `{WEIGHTS_FILE}` (safetensors; no pickle), settings in `{CONFIG_FILE}`.",
        "",
    ]
    return "\n".join(lines)


def _clear_to_replace(directory: Path) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise MedfmError(f"cannot write a bundle to {directory}: it exists and is not a folder")
    others = sorted(p.name for p in directory.iterdir() if p.name not in BUNDLE_FILES)
    if others:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise MedfmError(
            f"refusing to overwrite {directory}: it is not a bundle folder (it holds {shown}); "
            "choose an empty or new folder"
        )


def save_bundle(
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    card: str | None = None,
    files: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a bundle folder atomically and return its path.

    ``files`` are further safetensors files of the bundle by name (:data:`EXTRA_FILES`: the record of
    the subjects the encoder was trained on).

    The files are written to a temporary folder next to ``directory`` which then replaces it, so a
    reader never sees half a bundle. An existing folder is replaced only when it is empty or a bundle.
    ``config`` needs ``encoder.name``; ``method`` defaults to null and ``encoder_prefix`` to the first of
    :data:`KNOWN_PREFIXES` that some key starts with (``""`` when none does: an encoder's own weights).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    config = _plain(config, "config")
    encoder = config.get("encoder")
    if not isinstance(encoder, dict) or not encoder.get("name"):
        raise MedfmError("bundle config needs encoder.name (the registered encoder the weights belong to)")
    config.setdefault("method", None)
    tensors = storable(state_dict)
    config.setdefault("encoder_prefix", _guess_prefix(tensors))
    prefix = config["encoder_prefix"]
    if prefix and not any(k.startswith(prefix) for k in tensors):
        raise MedfmError(f"encoder_prefix {prefix!r} matches no key of the state dict")
    _clear_to_replace(directory)

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    old: Path | None = None
    try:
        save_file(
            tensors,
            str(staging / WEIGHTS_FILE),
            metadata={"format": "pt", "medfm_encoder": str(encoder["name"])},
        )
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        (staging / CARD_FILE).write_text(card if card is not None else default_card(config), encoding="utf-8")
        for name, extra in (files or {}).items():
            if name not in EXTRA_FILES:
                raise MedfmError(f"a bundle holds no file {name!r}; it may hold {sorted(EXTRA_FILES)}")
            save_file(storable(extra), str(staging / name))
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "bundle")
        try:
            os.replace(staging, directory)
        except OSError:
            if old is not None:
                os.replace(old / "bundle", directory)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return directory


# ----------------------------------------------------------------------------------------------- encoders


def _guess_prefix(keys) -> str:
    return next((p for p in KNOWN_PREFIXES if any(k.startswith(p) for k in keys)), "")


def encoder_state(bundle: Bundle) -> dict[str, torch.Tensor]:
    """The encoder's entries of a bundle's state dict, with the method's prefix removed.

    The prefix is ``config["encoder_prefix"]``; without one, the first of :data:`KNOWN_PREFIXES` that
    some key starts with, else none (an encoder's own state dict).
    """
    prefix = bundle.config.get("encoder_prefix")
    state = bundle.state
    if prefix is None:
        prefix = _guess_prefix(state)
    if not prefix:
        return dict(state)
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        raise MedfmError(f"bundle {bundle.path}: encoder_prefix {prefix!r} matches no key of its weights")
    return picked


def _as_tuple(size: Any, dims: int) -> tuple[int, ...]:
    return (int(size),) * dims if isinstance(size, int) else tuple(int(s) for s in size)


def _fit_pos_embed(
    pos_embed: torch.Tensor, model: nn.Module, old_size: Any, target: torch.Tensor
) -> torch.Tensor:
    """``pos_embed`` of a model built for ``old_size`` on the grid of ``model`` (resampled if grids differ).

    The grids can differ with the same number of tokens (``(4, 4, 4)`` and ``(2, 8, 4)``), so they are
    compared, not only the shapes.
    """
    dims = getattr(model, "spatial_dims", 2)
    patch = tuple(model.patch_size)
    new_grid = tuple(model.patch_embed.grid_size)
    n_old = pos_embed.shape[1]
    n_prefix = target.shape[1] - math.prod(new_grid)
    old_grid = tuple(s // p for s, p in zip(_as_tuple(old_size, dims), patch)) if old_size else None
    if old_grid is None or n_prefix < 0 or n_old - n_prefix != math.prod(old_grid):
        side = round((n_old - max(n_prefix, 0)) ** (1 / dims))  # a square / cubic grid, the usual case
        old_grid = (side,) * dims
        if n_prefix < 0 or side**dims != n_old - n_prefix:
            shapes = f"{tuple(pos_embed.shape)} to {tuple(target.shape)}"
            raise MedfmError(f"cannot resample pos_embed {shapes}: unknown source grid")
    if old_grid == new_grid and pos_embed.shape == target.shape:
        return pos_embed
    if dims == 3:
        from medfm.models.vit3d import resample_pos_embed_3d

        return resample_pos_embed_3d(pos_embed, new_grid, old_grid, n_prefix)
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=n_prefix)


def _convert_in_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Patch-embedding weights for another number of input channels.

    To one channel: the sum over channels (a grey image copied to every channel gives the same output).
    From one channel: copied to every channel and divided by their number.
    """
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.repeat(1, in_chans, *([1] * (weight.ndim - 2))) / in_chans
    raise MedfmError(
        f"cannot convert a patch embedding from {have} to {in_chans} input channels "
        "(only to or from 1 channel is supported)"
    )


def _key_list(keys: list[str]) -> str:
    return ", ".join(keys[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "")


def load_encoder(
    path: str | Path,
    *,
    img_size: int | tuple[int, ...] | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """The encoder of a bundle with its trained weights.

    ``img_size`` builds it for another size (position embeddings resampled: bicubic in 2D, trilinear in
    3D). ``in_chans`` other than the bundle's converts the patch embedding (to or from one channel, for
    grey <-> RGB). ``overrides`` are passed to :func:`medfm.models.create_encoder` (``drop_path_rate``...).
    """
    from medfm.models.encoders import ENCODERS, create_encoder

    bundle = load_bundle(path)
    enc = bundle.config["encoder"]
    state = encoder_state(bundle)
    if PATCH_WEIGHT in state:
        bundle_chans = int(state[PATCH_WEIGHT].shape[1])
    else:
        bundle_chans = int(enc.get("in_chans") or 1)
    bundle_size = enc.get("img_size")
    if bundle_size is None and enc["name"] in ENCODERS:
        bundle_size = ENCODERS.get(enc["name"]).img_size  # what the encoder was built with by default
    if isinstance(bundle_size, list):
        bundle_size = tuple(bundle_size)
    size = img_size if img_size is not None else bundle_size
    model = create_encoder(
        enc["name"], in_chans=bundle_chans if in_chans is None else in_chans, img_size=size, **overrides
    )
    target = model.state_dict()

    state = {k: v for k, v in state.items() if k in target or not k.startswith(HEAD_PREFIXES)}
    if PATCH_WEIGHT in state and PATCH_WEIGHT in target:
        state[PATCH_WEIGHT] = _convert_in_chans(state[PATCH_WEIGHT], target[PATCH_WEIGHT].shape[1])
    if POS_EMBED in state and POS_EMBED in target:
        state[POS_EMBED] = _fit_pos_embed(state[POS_EMBED], model, bundle_size, target[POS_EMBED])

    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        parts = [f"bundle {bundle.path} does not fit encoder {enc['name']!r}"]
        if missing:
            parts.append(f"missing keys: {_key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_key_list(unexpected)}")
        raise MedfmError("; ".join(parts))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if state[k].shape != target[k].shape
    ]
    if wrong:
        raise MedfmError(
            f"bundle {bundle.path} does not fit encoder {enc['name']!r}: shape mismatch in "
            + _key_list(wrong)
        )
    model.load_state_dict(state, strict=True)
    return model
