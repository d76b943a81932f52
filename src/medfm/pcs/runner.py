"""``medfm pcs run``: every cell of a grid through its stage, then one tidy table and its summaries.

Cells run through ``concurrent.futures`` executors. By default there is one single-process pool per
worker, and cells that share expensive work (the stage's ``affinity``: the same images at the same
resolution through the same weights) go to the same process, so features are computed once per worker.
A cell is a call of the top-level :func:`run_cell` with plain, picklable arguments, which is all a
cluster scheduler needs: pass its executors (for example Ray's) in ``executors``.

A finished cell leaves ``cells/<id>/cell.json``; running the grid again skips finished cells whose
choices are unchanged, so a stopped grid resumes. ``medfm pcs report`` (:func:`rebuild_report`) writes
the summaries and the report of a finished grid again from what it stored, running no cell.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor, Future, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfm.config import config_to_dict
from medfm.errors import ConfigError
from medfm.executors import make_executor
from medfm.log import get_logger, progress, setup_logging
from medfm.measure import PowerModel, measure
from medfm.pcs.grid import Cell, Grid, PredictionCheck, load_grid, save_grid
from medfm.pcs.stability import (
    NUMBERS,
    UNIT,
    axis_effects,
    pairwise_wins,
    pass_counts,
    prediction_agreement,
    rank_stability,
    stability_table,
)
from medfm.pcs.stages import CellPredictions, get_stage
from medfm.runs import Run

log = get_logger("pcs")

CELL_FILE = "cell.json"
PREDICTED_FILE = "predicted.npz"
RUN_UNIT = ("task", "model", "protocol", "setting")  # what a prediction check passes or fails
AGREEMENT = ("raters", "items", "disagreement", "pairwise_disagreement", "fleiss_kappa")
PASSING = "_passing"  # suffix of a summary over the cells that passed the check only


def start_worker(threads: int) -> None:
    """Each worker process: its torch threads, and warnings (a cell's skipped data) on the console."""
    setup_logging("WARNING")
    torch.set_num_threads(max(1, threads))


def run_cell(
    stage_name: str,
    config: Any,
    folder: str,
    cell_id: str,
    choices: dict[str, str],
    threads: int,
    power: PowerModel,
) -> dict[str, Any]:
    """Run one cell and write its rows, predicted labels and record; return the record.

    A failure is recorded (with its traceback), not raised: one bad cell does not stop a grid.
    """
    torch.set_num_threads(max(1, threads))
    folder_path = Path(folder)
    folder_path.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "cell": cell_id,
        "choices": choices,
        "config": config_to_dict(config),
        "threads": torch.get_num_threads(),
    }
    try:
        with measure(power) as cost:
            output = get_stage(stage_name).run(config, folder_path)
        output.rows.to_csv(folder_path / "rows.csv", index=False)
        save_predicted(output.predictions, folder_path / PREDICTED_FILE)
        record.update(status="ok", cost=cost.as_dict(), models=output.costs)
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    (folder_path / CELL_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def save_predicted(predictions: list[CellPredictions], path: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    units = []
    for i, pred in enumerate(predictions):
        arrays[f"ids{i}"] = pred.sample_ids.astype(str)
        arrays[f"labels{i}"] = pred.labels
        units.append(pred.unit)
    arrays["units"] = np.array(json.dumps(units))
    np.savez_compressed(path, **arrays)


def load_predicted(path: Path) -> list[CellPredictions]:
    if not path.is_file():
        return []
    with np.load(path, allow_pickle=False) as data:
        units = json.loads(str(data["units"]))
        return [CellPredictions(u, data[f"ids{i}"], data[f"labels{i}"]) for i, u in enumerate(units)]


def read_rows(path: Path) -> pd.DataFrame:
    """A rows CSV with text columns as written (an empty setting stays "") and numbers as floats."""
    rows = pd.read_csv(path, keep_default_na=False, dtype=str)
    for column in NUMBERS:
        if column in rows:
            rows[column] = pd.to_numeric(rows[column], errors="coerce")
    if "passed" in rows:
        rows["passed"] = rows["passed"] == "True"
    return rows


def read_cell(folder: Path) -> dict[str, Any] | None:
    path = folder / CELL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def assign(cells: list[Cell], grid: Grid, workers: int) -> list[list[Cell]]:
    """Cells per worker: groups of equal affinity kept together (a cell of affinity "" is a group of its
    own), the costliest group first onto the least loaded worker, by the stage's cost estimate; groups
    are split when there are fewer of them than workers."""
    configs = {cell.id: grid.cell_config(cell) for cell in cells}
    cost = {cell.id: grid.stage.cost(configs[cell.id]) for cell in cells}
    groups: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[grid.stage.affinity(configs[cell.id]) or cell.id].append(cell)

    def total(part: list[Cell]) -> float:
        return sum(cost[cell.id] for cell in part)

    parts = sorted(groups.values(), key=total, reverse=True)
    while len(parts) < workers and len(parts[0]) > 1:
        largest = parts.pop(0)
        half = (len(largest) + 1) // 2
        parts = sorted([*parts, largest[:half], largest[half:]], key=total, reverse=True)
    lanes: list[list[Cell]] = [[] for _ in range(max(1, workers))]
    for part in parts:
        min(lanes, key=total).extend(part)
    return [lane for lane in lanes if lane]


def run_cells(grid: Grid, cells: list[Cell], executors: list[Executor] | None = None) -> list[dict]:
    out = grid.output
    own = executors is None
    if own:
        workers = grid.config.workers
        lanes = assign(cells, grid, max(1, workers))
        executors = [make_executor(1 if workers else 0, start_worker, (grid.config.threads,)) for _ in lanes]
    else:
        lanes = assign(cells, grid, len(executors))
    futures: dict[Future, Cell] = {}
    try:
        for executor, lane in zip(executors, lanes):
            for cell in lane:
                args = (grid.config.stage, grid.cell_config(cell), str(out / "cells" / cell.id), cell.id)
                args += (cell.choices, grid.config.threads, grid.config.power)
                futures[executor.submit(run_cell, *args)] = cell
        records = []
        for future in progress(
            as_completed(futures), f"grid {grid.config.name}", total=len(futures), unit="cells"
        ):
            record = future.result()
            if record["status"] != "ok":
                log.warning("cell %s %s failed: %s", record["cell"], record["choices"], record["error"])
            records.append(record)
        return records
    finally:
        if own:
            for executor in executors:  # on an interrupt, cells not yet started are dropped
                executor.shutdown(cancel_futures=True)


def passed_units(rows: pd.DataFrame, check: PredictionCheck) -> pd.Series:
    """Whether each row's (cell, task, model, protocol, setting) passed the prediction check."""
    if not check.metric:
        return pd.Series(True, index=rows.index)
    keys = ["cell", *RUN_UNIT]
    val = rows[(rows["split"] == "val") & (rows["subgroup"] == "all") & (rows["metric"] == check.metric)]
    verdict = {tuple(r[k] for k in keys): check.passes(float(r["value"])) for _, r in val.iterrows()}
    unchecked = {tuple(r) for r in rows[keys].itertuples(index=False)} - set(verdict)
    if unchecked:
        runs = sorted({" / ".join(map(str, u[1:4])) for u in unchecked})
        log.warning("no validation %s for %s: counted as failing the check", check.metric, "; ".join(runs))
    return pd.Series(
        [verdict.get(tuple(r), False) for r in rows[keys].itertuples(index=False)], index=rows.index
    )


def results_table(grid: Grid, records: list[dict]) -> pd.DataFrame:
    frames = []
    for record in records:
        if record["status"] != "ok":
            continue
        rows = read_rows(grid.output / "cells" / record["cell"] / "rows.csv")
        for axis in grid.axes:
            rows[axis] = record["choices"][axis]
        rows["cell"] = record["cell"]
        frames.append(rows)
    if not frames:
        raise ConfigError(f"grid {grid.config.name}: every cell failed; see cells/*/cell.json")
    table = pd.concat(frames, ignore_index=True)
    table["passed"] = passed_units(table, grid.config.check)
    lead = ["cell", *grid.axes, *UNIT, *NUMBERS, "passed"]
    return table[[c for c in lead if c in table] + [c for c in table if c not in lead]]


def agreement_table(
    grid: Grid, records: list[dict], results: pd.DataFrame, passing_only: bool = False
) -> pd.DataFrame:
    """Per (task, model, protocol, setting): agreement of the predicted labels of every cell (or, with
    ``passing_only``, every passing cell) on the test examples all of them predicted, and the share of
    cells that passed the check (``with_run_pass_counts``)."""
    passed = {tuple(r) for r in results.loc[results["passed"], ["cell", *RUN_UNIT]].itertuples(index=False)}
    raters: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for record in records:
        if record["status"] != "ok":
            continue
        for pred in load_predicted(grid.output / "cells" / record["cell"] / PREDICTED_FILE):
            unit = tuple(pred.unit[k] for k in RUN_UNIT)
            if not passing_only or (record["cell"], *unit) in passed:
                raters[unit].append((pred.sample_ids, pred.labels))
    rows = []
    for unit, preds in raters.items():
        common = set(preds[0][0]).intersection(*(set(ids) for ids, _ in preds[1:]))
        if not common:
            continue
        order = sorted(common)
        matrix = []
        for ids, labels in preds:
            position = {sample: i for i, sample in enumerate(ids)}
            picked = labels[[position[s] for s in order]]
            matrix.append(picked.reshape(-1))  # multi-label: every (example, label) is an item
        stats = prediction_agreement(np.stack(matrix))
        rows.append({**dict(zip(RUN_UNIT, unit)), **stats})
    return with_run_pass_counts(pd.DataFrame(rows, columns=[*RUN_UNIT, *AGREEMENT]), results)


def with_run_pass_counts(table: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per task, model, protocol, setting) with ``n_pass`` and ``pass_rate``: how many
    of the cells that ran it passed the check, after its ``raters``."""
    runs = results[["cell", *RUN_UNIT, "passed"]].drop_duplicates()
    counts = pass_counts(runs, list(RUN_UNIT))
    out = table.merge(counts, on=list(RUN_UNIT), how="left")
    return out[[*RUN_UNIT, "raters", "n_pass", "pass_rate", *AGREEMENT[1:]]]


def compute_table(grid: Grid, records: list[dict]) -> pd.DataFrame:
    """One row per (cell, model): the model's parameters, FLOPs and encoding throughput beside the
    cell's wall time, CPU time, peak memory and energy estimate."""
    rows = []
    for record in records:
        if record["status"] != "ok":
            continue
        cell = {"cell": record["cell"], **record["choices"], **record["cost"], "threads": record["threads"]}
        for model in record["models"] or [{}]:
            rows.append({**cell, **model})
    return pd.DataFrame(rows)


def summary_tables(
    grid: Grid, results: pd.DataFrame, agreement: Callable[[bool], pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """Each summary over every cell (``stability``, ...) and over the passing cells only
    (``stability_passing``, ...); ``agreement(passing_only)`` gives the agreement tables."""
    axes = list(grid.axes)
    tables = {}
    for suffix, passing_only in (("", False), (PASSING, True)):
        tables[f"stability{suffix}"] = stability_table(results, axes, passing_only)
        tables[f"effects{suffix}"] = axis_effects(results, axes, passing_only)
        tables[f"ranks{suffix}"] = rank_stability(results, axes, passing_only=passing_only)
        tables[f"wins{suffix}"] = pairwise_wins(results, axes, passing_only=passing_only)
        tables[f"agreement{suffix}"] = agreement(passing_only)
    return tables


def summarise(grid: Grid, records: list[dict]) -> dict[str, pd.DataFrame]:
    results = results_table(grid, records)
    return {
        "results": results,
        **summary_tables(grid, results, lambda passing: agreement_table(grid, records, results, passing)),
        "compute": compute_table(grid, records),
    }


def write_tables(out: Path, tables: dict[str, pd.DataFrame]) -> dict[str, Path]:
    paths = {}
    for name, table in tables.items():
        paths[f"{name}.csv"] = out / f"{name}.csv"
        table.to_csv(paths[f"{name}.csv"], index=False)
    return paths


def run_grid(grid: Grid, executors: list[Executor] | None = None, *, rerun: bool = False) -> dict[str, Path]:
    """Run (or resume) every cell of ``grid``, summarise, and write the tables and the PCS report."""
    from medfm.pcs.report import write_pcs_report

    out = grid.output
    out.mkdir(parents=True, exist_ok=True)
    save_grid(grid, out / "grid.yaml")
    inputs: dict[str, Path] = {}
    for cell in grid.cells:
        inputs.update(grid.stage.inputs(grid.cell_config(cell)))
    run = Run.create(out, grid.config, data=inputs)
    started = time.time()
    records, todo = [], []
    for cell in grid.cells:
        record = None if rerun else read_cell(out / "cells" / cell.id)
        same = record and record["choices"] == cell.choices
        if same and record["status"] == "ok" and record["config"] == config_to_dict(grid.cell_config(cell)):
            records.append(record)
        else:
            todo.append(cell)
    if records:
        log.info(
            "grid %s: %d of %d cells already done, %d to run",
            grid.config.name,
            len(records),
            len(grid.cells),
            len(todo),
        )
    records += run_cells(grid, todo, executors) if todo else []
    records.sort(key=lambda r: r["cell"])
    for record in records:
        run.log(cell=record["cell"], status=record["status"], **record["choices"], **record.get("cost", {}))
    tables = summarise(grid, records)
    paths = write_tables(out, tables)
    paths.update(write_pcs_report(grid, records, tables, run.provenance))
    failed = [r["cell"] for r in records if r["status"] != "ok"]
    run.finish(cells=len(records), failed=failed, seconds=round(time.time() - started, 1))
    log.info(
        "grid %s: %d cells (%d failed); report %s",
        grid.config.name,
        len(records),
        len(failed),
        paths["report.html"],
    )
    return paths


def rebuild_report(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Path]:
    """Write the summaries and the report of a finished grid again from what it stored; no cell runs.

    Reads ``grid.yaml`` (with ``key=value`` ``overrides``, e.g. where the encoder's card now lies),
    ``results.csv``, ``compute.csv`` and ``provenance.json``, and the cells' records and predicted labels
    where ``cells/`` is kept. Without the predicted labels, agreement cannot be computed again: the
    stored agreement tables are kept as they are, with their pass counts taken from ``results.csv``.
    """
    from medfm.pcs.report import write_pcs_report

    run_dir = Path(run_dir)
    if not (run_dir / "grid.yaml").is_file() or not (run_dir / "results.csv").is_file():
        raise ConfigError(f"{run_dir} is not a finished PCS run folder (it needs grid.yaml and results.csv)")
    grid = load_grid(run_dir / "grid.yaml", overrides)
    # `medfm pcs reproduce` needs the cells: here if kept, else where the grid ran
    cells_folder = run_dir if (run_dir / "cells").is_dir() else grid.output
    grid.config.output = str(run_dir)
    results = read_rows(run_dir / "results.csv")
    records = stored_records(grid, results)
    labels_kept = any((run_dir / "cells" / r["cell"] / PREDICTED_FILE).is_file() for r in records)
    if not labels_kept:
        log.warning("%s keeps no predicted labels: agreement tables are reused as stored", run_dir)

    def agreement(passing_only: bool) -> pd.DataFrame:
        if labels_kept:
            return agreement_table(grid, records, results, passing_only)
        return stored_agreement(run_dir, results, passing_only)

    tables = summary_tables(grid, results, agreement)
    paths = write_tables(run_dir, tables)
    compute = run_dir / "compute.csv"
    tables |= {"results": results, "compute": pd.read_csv(compute) if compute.is_file() else pd.DataFrame()}
    provenance = run_dir / "provenance.json"
    stored = json.loads(provenance.read_text()) if provenance.is_file() else {}
    paths.update(write_pcs_report(grid, records, tables, stored, cells_folder))
    return paths


def stored_records(grid: Grid, results: pd.DataFrame) -> list[dict[str, Any]]:
    """Each cell's ``cell.json`` where kept; otherwise a record of its choices whose status says whether
    ``results.csv`` holds its rows."""
    ran = set(results["cell"])
    records = []
    for cell in grid.cells:
        record = read_cell(grid.output / "cells" / cell.id)
        if record is None:
            record = {"cell": cell.id, "choices": cell.choices, "status": "ok"}
            if cell.id not in ran:
                record.update(status="failed", error="no rows in results.csv")
        records.append(record)
    return records


def stored_agreement(run_dir: Path, results: pd.DataFrame, passing_only: bool) -> pd.DataFrame:
    """An agreement table as a finished grid stored it (empty when it stored none)."""
    path = run_dir / f"agreement{PASSING if passing_only else ''}.csv"
    if not path.is_file():
        return with_run_pass_counts(pd.DataFrame(columns=[*RUN_UNIT, *AGREEMENT]), results)
    stored = pd.read_csv(path, dtype={k: str for k in RUN_UNIT}).fillna({k: "" for k in RUN_UNIT})
    return with_run_pass_counts(stored[[*RUN_UNIT, *AGREEMENT]], results)
