"""A PCS grid through medfm's runner beside the same cells run one by one with ``run_eval``.

    MEDFM_DATA_ROOT=... python benchmarks/pcs_grid.py --bundle runs/pretrain/mae-vit-tiny8-64/bundle

Both sides evaluate the same cells (PneumoniaMNIST; linear probe and kNN of the encoder and of its random
twin; ``--seeds`` seeds x bootstrap / half of the training patients) in this process with the same
torch threads:

- ``medfm``: ``run_grid`` with ``workers=0``: the task is loaded once and each backbone's features are
  computed once, then cut to every cell's training subsample;
- ``reference``: a loop calling ``run_eval`` once per cell, as a script would without the PCS layer (each
  call loads the task and encodes every split again).

The benchmark also checks that both sides give identical result rows, and writes its table as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from medfm.evaluate.suite import run_eval
from medfm.log import setup_logging
from medfm.pcs.grid import Grid, GridConfig
from medfm.pcs.runner import read_rows, run_grid
from medfm.pcs.stability import UNIT
from medfm.pcs.stages import STAGES, eval_rows


def grid_config(bundle: str, seeds: int, limit: int, threads: int, out: Path) -> GridConfig:
    return GridConfig(
        name="benchmark",
        output=str(out / "medfm"),
        workers=0,
        threads=threads,  # as the reference: the thread count moves results in the last bits
        base={
            "encoder": bundle,
            "tasks": ["pneumoniamnist"],
            "protocols": ["linear_probe", "knn"],
            "baselines": ["random_init"],
            "random_init_seed": 0,
            "n_boot": 100,
            "limit": limit,
        },
        axes={
            "seed": {"key": "seed", "values": list(range(seeds))},
            "train_data": {
                "alternatives": {
                    "bootstrap": {"train_subsample": {"mode": "bootstrap"}},
                    "half": {"train_subsample": {"mode": "fraction", "fraction": 0.5}},
                }
            },
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runs/pretrain/mae-vit-tiny8-64/bundle")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1500, help="examples of PneumoniaMNIST (0: all 5,030)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/pcs_grid"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pcs_grid-cpu.json"))
    args = parser.parse_args()
    setup_logging("WARNING")
    torch.set_num_threads(args.threads)
    grid = Grid(grid_config(args.bundle, args.seeds, args.limit, args.threads, args.out))

    start = time.perf_counter()
    reference = []
    for cell in grid.cells:
        config = grid.cell_config(cell)
        config.output = str(args.out / "reference" / cell.id)
        run_eval(config)
        rows = eval_rows(Path(config.output)).assign(cell=cell.id)
        reference.append(rows)
    reference_seconds = time.perf_counter() - start

    STAGES.get("eval").forget()
    start = time.perf_counter()
    run_grid(grid, rerun=True)
    medfm_seconds = time.perf_counter() - start

    ours = read_rows(grid.output / "results.csv")
    theirs = pd.concat(reference, ignore_index=True)
    keys = ["cell", *UNIT]
    merged = ours.merge(theirs, on=keys, suffixes=("", "_reference"))
    identical = len(merged) == len(theirs) and bool((merged["value"] == merged["value_reference"]).all())
    # the medfm side also writes the summaries and the report; the reference writes neither
    table = [
        {"side": "medfm (run_grid)", "seconds": round(medfm_seconds, 1)},
        {"side": "reference (run_eval per cell)", "seconds": round(reference_seconds, 1)},
    ]
    for row in table:
        row["seconds per cell"] = round(row["seconds"] / len(grid.cells), 2)
    print(f"{len(grid.cells)} cells, {args.threads} thread(s); result rows identical: {identical}")
    print(pd.DataFrame(table).to_string(index=False))
    print(f"speed-up: {reference_seconds / medfm_seconds:.2f}x")
    record = {
        "benchmark": "pcs_grid",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "cells": len(grid.cells),
        "identical_rows": identical,
        "results": table,
        "speedup": round(reference_seconds / medfm_seconds, 2),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    if not identical:
        raise SystemExit("the two sides gave different result rows")


if __name__ == "__main__":
    main()
