"""Grids of named judgment calls: axes of alternatives over a stage's config, and the cells they make.

A grid YAML names the stage, its base config, the axes and the prediction check::

    name: pneumonia-probe
    stage: eval
    base: {encoder: runs/pretrain/mae-vit-tiny8-64/bundle, tasks: [pneumonia_xray]}
    axes:
      seed: {key: seed, values: [0, 1, 2, 3, 4]}           # one config key, one alternative per value
      train_data:                                          # named alternatives, each a set of overrides
        alternatives:
          bootstrap: {train_subsample.mode: bootstrap}
          half: {train_subsample: {mode: fraction, fraction: 0.5}}
    check: {metric: auroc, minimum: 0.8}                   # on the validation split

A cell is one alternative of every axis; its config is the stage's defaults <- ``base`` <- the chosen
alternatives' overrides, in axis order. Two axes may not set the same key: a cell's choices must say
what produced it. Every cell's config is resolved when the grid is loaded, so a misspelt key fails before
any work starts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medfm.config import config_to_dict, load_config
from medfm.errors import ConfigError
from medfm.measure import PowerModel
from medfm.pcs.stability import NUMBERS, UNIT

# Columns of the results table and of the run's log lines; an axis of the same name would be ambiguous.
RESERVED = frozenset({"cell", "modality", "passed", "status", *UNIT, *NUMBERS})


@dataclass
class PredictionCheck:
    """Keep a (cell, model, protocol) only if its validation ``metric`` lies within the bounds."""

    metric: str = ""  # "" : no check, every alternative is kept
    minimum: float | None = None
    maximum: float | None = None

    def passes(self, value: float) -> bool:
        if value != value:  # NaN: the metric is undefined on this validation split
            return False
        return (self.minimum is None or value >= self.minimum) and (
            self.maximum is None or value <= self.maximum
        )

    def describe(self) -> str:
        if not self.metric:
            return "none"
        bounds = [f">= {self.minimum}" if self.minimum is not None else ""]
        bounds += [f"<= {self.maximum}" if self.maximum is not None else ""]
        return f"validation {self.metric} " + " and ".join(b for b in bounds if b)


@dataclass
class GridConfig:
    name: str = ""
    stage: str = "eval"
    output: str = ""  # default: runs/pcs/<name>
    base: dict[str, Any] = field(default_factory=dict)  # the stage's config, as in its own YAML
    axes: dict[str, Any] = field(default_factory=dict)  # axis -> {key, values} or {alternatives}
    check: PredictionCheck = field(default_factory=PredictionCheck)
    workers: int = 2  # processes running cells (0: this process)
    threads: int = 1  # torch threads per process (recorded: results can depend on it)
    report_metrics: list[str] = field(default_factory=lambda: ["auroc", "balanced_accuracy", "ece"])
    power: PowerModel = field(default_factory=PowerModel)


@dataclass(frozen=True)
class Cell:
    id: str
    choices: dict[str, str]  # axis -> alternative name
    overrides: dict[str, Any]  # nested, merged over the base


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (nested values merged, so both spellings mix)."""
    merged = OmegaConf.create({})
    for key, value in overrides.items():
        OmegaConf.update(merged, str(key), value, merge=True)
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def leaf_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys |= leaf_keys(value, path + ".") if isinstance(value, dict) and value else {path}
    return keys


def axis_alternatives(name: str, spec: Any) -> dict[str, dict[str, Any]]:
    """An axis's alternatives as ``{alternative name: nested overrides}``."""
    if not isinstance(spec, dict) or ("alternatives" in spec) == ("key" in spec):
        raise ConfigError(
            f"axis {name!r} must have either 'key' and 'values' (one config key) or 'alternatives' "
            "(named sets of overrides)"
        )
    if "key" in spec:
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axis {name!r}: 'values' must be a non-empty list")
        names = spec.get("names") or [str(v) for v in values]
        if len(names) != len(values):
            raise ConfigError(f"axis {name!r}: {len(names)} names for {len(values)} values")
        alternatives = {str(n): nested({spec["key"]: v}) for n, v in zip(names, values)}
    else:
        given = spec["alternatives"]
        if not isinstance(given, dict) or not given:
            raise ConfigError(f"axis {name!r}: 'alternatives' must map names to overrides")
        alternatives = {str(n): nested(o or {}) for n, o in given.items()}
    if len(alternatives) < 2:
        raise ConfigError(f"axis {name!r} has {len(alternatives)} alternative; an axis needs at least two")
    return alternatives


class Grid:
    """A loaded grid: its config, the alternatives of every axis, and its cells (resolved and checked)."""

    def __init__(self, config: GridConfig):
        from medfm.pcs.stages import get_stage

        if not config.name:
            raise ConfigError("a grid needs a name (it names the output folder and the report)")
        try:
            self.stage = get_stage(config.stage)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from None
        if not config.axes:
            raise ConfigError(f"grid {config.name} has no axes: nothing is perturbed")
        clash = sorted(set(config.axes) & RESERVED)
        if clash:
            raise ConfigError(f"axis names {clash} are results-table columns; rename the axes")
        named = [config.check.metric] if config.check.metric else []
        unknown = sorted(set(named + config.report_metrics) - set(self.stage.metrics))
        if unknown:
            raise ConfigError(
                f"stage {config.stage} has no metric(s) {unknown}; it has {list(self.stage.metrics)}"
            )
        self.config = config
        self.axes = {name: axis_alternatives(name, spec) for name, spec in config.axes.items()}
        owner: dict[str, str] = {}
        for axis, alternatives in self.axes.items():
            for key in set().union(*(leaf_keys(o) for o in alternatives.values())):
                if key in owner:
                    raise ConfigError(f"axes {owner[key]!r} and {axis!r} both set {key!r}")
                owner[key] = axis
        names = list(self.axes)
        combos = itertools.product(*(self.axes[a].items() for a in names))
        width = len(str(max(0, len(self) - 1)))
        self.cells = []
        for index, combo in enumerate(combos):
            choices = {axis: alt for axis, (alt, _) in zip(names, combo)}
            merged = OmegaConf.merge(*(OmegaConf.create(o) for _, o in combo)) if combo else {}
            overrides = OmegaConf.to_container(OmegaConf.create(merged))
            self.cells.append(Cell(f"c{index:0{width}d}", choices, overrides))  # type: ignore[arg-type]
        for cell in self.cells:
            self.cell_config(cell)  # fail now on a key or value the stage does not accept

    def __len__(self) -> int:
        count = 1
        for alternatives in self.axes.values():
            count *= len(alternatives)
        return count

    @property
    def output(self) -> Path:
        return Path(self.config.output or f"runs/pcs/{self.config.name}")

    def cell_config(self, cell: Cell) -> Any:
        """The stage's config for ``cell``: defaults <- stage settings <- base <- the cell's overrides."""
        layers = [
            OmegaConf.structured(self.stage.config_type),
            OmegaConf.create(self.stage.defaults),
            OmegaConf.create(self.config.base),
            OmegaConf.create(cell.overrides),
        ]
        try:
            config = OmegaConf.to_object(OmegaConf.merge(*layers))
        except OmegaConfBaseException as err:
            key = f" (key {err.full_key!r})" if getattr(err, "full_key", None) else ""
            first = str(err).strip().splitlines()[0]
            raise ConfigError(f"grid {self.config.name}, cell {cell.choices}{key}: {first}") from None
        check = getattr(config, "check", None)
        return check() if callable(check) else config

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise ConfigError(f"grid {self.config.name} has no cell {cell_id!r} (cells c0.. {self.cells[-1].id})")


def load_grid(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """A grid from its YAML and ``key=value`` overrides (``workers=1``, ``base.n_boot=100``, ...)."""
    return Grid(load_config(GridConfig, path, overrides))


def save_grid(grid: Grid, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(grid.config), sort_keys=False))
    return path
