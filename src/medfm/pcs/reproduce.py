"""``medfm pcs reproduce``: run one cell of a finished grid again from its record and compare its rows.

The cell runs from the grid saved beside its results (``grid.yaml``), in a fresh folder, in this process,
with nothing reused from earlier cells and with the torch thread count the cell recorded. Every row of
the cell (or the one row asked for) must match exactly: the same value, interval and count. Differences
in the code version or packages since the grid ran are reported beside the verdict.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medfm.errors import ConfigError
from medfm.pcs.grid import load_grid
from medfm.pcs.runner import CELL_FILE, read_cell, read_rows, run_cell
from medfm.pcs.stability import UNIT
from medfm.runs import git_commit, package_versions

COMPARED = ("value", "ci_low", "ci_high", "n")


@dataclass
class Reproduction:
    cell: str
    choices: dict[str, str]
    compared: pd.DataFrame  # UNIT columns, then recorded and reproduced value of each compared column
    mismatches: pd.DataFrame
    environment: list[str]  # what differs from the recorded run (code version, packages, threads)

    @property
    def matches(self) -> bool:
        return self.mismatches.empty and len(self.compared) > 0


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    a, b = pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")
    return ((a == b) | (a.isna() & b.isna())).to_numpy()


def reproduce(run_dir: str | Path, cell: str | None = None, row: int | None = None) -> Reproduction:
    """Re-run ``cell`` (or the cell of row ``row`` of ``results.csv``) and compare with what was recorded."""
    run_dir = Path(run_dir)
    if not (run_dir / "grid.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a PCS run folder (no grid.yaml)")
    grid = load_grid(run_dir / "grid.yaml", [f"output={run_dir}"])
    results = read_rows(run_dir / "results.csv")
    if row is not None:
        if not 0 <= row < len(results):
            raise ConfigError(f"row {row} is outside results.csv (rows 0..{len(results) - 1})")
        cell = str(results.loc[row, "cell"])
    if cell is None:
        raise ConfigError("name a --cell or a --row to reproduce")
    target = grid.cell(cell)
    recorded = read_cell(run_dir / "cells" / cell)
    if recorded is None or recorded.get("status") != "ok":
        raise ConfigError(f"cell {cell} has no successful record in {run_dir / 'cells' / cell / CELL_FILE}")
    grid.stage.forget()  # a reproduction computes everything itself
    with tempfile.TemporaryDirectory(prefix=f"reproduce-{cell}-") as scratch:
        record = run_cell(
            grid.config.stage,
            grid.cell_config(target),
            scratch,
            cell,
            target.choices,
            recorded["threads"],
            grid.config.power,
        )
        if record["status"] != "ok":
            raise ConfigError(f"cell {cell} failed when run again: {record['error']}")
        fresh = read_rows(Path(scratch) / "rows.csv")
    old = results[results["cell"] == cell]
    if row is not None:
        old = results.loc[[row]]
    keys = list(UNIT)
    merged = old[keys + list(COMPARED)].merge(
        fresh[keys + list(COMPARED)],
        on=keys,
        how="left",
        suffixes=(" recorded", " reproduced"),
        indicator=True,
    )
    same = np.ones(len(merged), dtype=bool)
    for column in COMPARED:
        same &= _same(merged[f"{column} recorded"], merged[f"{column} reproduced"])
    same &= (merged["_merge"] == "both").to_numpy()
    merged = merged.drop(columns="_merge")
    return Reproduction(cell, target.choices, merged, merged[~same], environment_changes(run_dir, record))


def environment_changes(run_dir: Path, record: dict) -> list[str]:
    provenance = json.loads((run_dir / "provenance.json").read_text())
    changes = []
    then, now = provenance.get("git", {}), git_commit(Path(__file__).parent)
    if then.get("commit") != now.get("commit") or now.get("dirty"):
        changes.append(
            f"code: recorded {then.get('commit')}, now {now.get('commit')}"
            + (" (dirty)" if now.get("dirty") else "")
        )
    versions = package_versions()
    for name, version in (provenance.get("packages") or {}).items():
        if versions.get(name) != version:
            changes.append(f"{name}: recorded {version}, now {versions.get(name)}")
    return changes
