"""Typed configs: dataclass defaults <- YAML file <- command-line overrides, validated by OmegaConf.

Every run saves the resolved config next to its outputs (see ``medfm.runs``), so a run can be
repeated from its own directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medfm.errors import ConfigError

C = TypeVar("C")


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> C:
    """Build a ``cls`` instance from its defaults, an optional YAML file, and ``key.sub=value`` overrides.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    layers = [OmegaConf.structured(cls)]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at top level, found {type(loaded).__name__}")
        layers.append(OmegaConf.create(loaded))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (for example image_size=64)")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        where = f" in {path}" if path else ""
        key = f" (key {err.full_key!r})" if getattr(err, "full_key", None) else ""
        raise ConfigError(f"invalid config{where}{key}: {_first_line(err)}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (paths as strings), ready for YAML or JSON."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def save_config(config: Any, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
