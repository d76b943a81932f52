"""A PCS grid through medfm's runner beside the same cells run one by one with ``run_eval``, both sharing
features the same way.

    MEDFM_DATA_ROOT=... python benchmarks/pcs_grid.py --bundle runs/pretrain/mae-vit-tiny8-64/bundle

Both sides evaluate the same cells (PneumoniaMNIST; linear probe and kNN of the encoder and of its random
twin; ``--seeds`` seeds x bootstrap / half of the training patients) in this process with the same
torch threads, each once per round, in alternating rounds (``rounds.py``: reference, medfm, ...; at
least 7), and each round from an empty memo of tasks and features (``medfm.evaluate.suite.EvalMemo``):

- ``reference``: a loop calling ``run_eval`` once per cell, every call handed the same memo, so the task
  is loaded once and each backbone's features computed once, as the runner does;
- ``medfm``: ``run_grid`` with ``workers=0`` (its process memo emptied first), which also fingerprints its
  inputs and writes the grid's summaries and report.

So the ratio is the runner's own cost or gain, not the feature cache's (which ``run_eval`` has too).
The table prints each side's median seconds with its spread, the per-round time ratio with its interval
and verdict (parity, faster or slower). The benchmark also checks that both sides give identical result
rows, and writes its JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from medfm.evaluate.suite import EvalMemo, run_eval
from medfm.log import setup_logging
from medfm.pcs.grid import Grid, GridConfig
from medfm.pcs.runner import read_rows, run_grid
from medfm.pcs.stability import UNIT
from medfm.pcs.stages import STAGES, eval_rows
from rounds import add_rounds_argument, alternate, summarise, table, write_record


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


def reference_side(grid: Grid, out: Path):
    """One ``run_eval`` per cell, all handed one memo (fresh each round, as the runner's): each task is
    loaded and each backbone encoded once, so the runner is measured, not its feature cache."""

    def run() -> dict:
        memo = EvalMemo()
        start = time.perf_counter()
        for cell in grid.cells:
            config = grid.cell_config(cell)
            config.output = str(out / cell.id)
            run_eval(config, memo=memo)
        return {"seconds": time.perf_counter() - start}

    return run


def runner_side(grid: Grid):
    """``run_grid`` in this process (``workers=0``), every cell rerun, from a fresh memo."""

    def run() -> dict:
        STAGES.get("eval").forget()
        start = time.perf_counter()
        run_grid(grid, rerun=True)
        return {"seconds": time.perf_counter() - start}

    return run


def identical_rows(grid: Grid, reference_out: Path) -> bool:
    """Whether the last round's runner rows equal the reference's, value for value."""
    ours = read_rows(grid.output / "results.csv")
    theirs = pd.concat(
        [eval_rows(reference_out / cell.id).assign(cell=cell.id) for cell in grid.cells], ignore_index=True
    )
    merged = ours.merge(theirs, on=["cell", *UNIT], suffixes=("", "_reference"))
    return len(merged) == len(theirs) and bool((merged["value"] == merged["value_reference"]).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runs/pretrain/mae-vit-tiny8-64/bundle")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1500, help="examples of PneumoniaMNIST (0: all 5,030)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_rounds_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/pcs_grid"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pcs_grid-cpu.json"))
    args = parser.parse_args()
    setup_logging("WARNING")
    torch.set_num_threads(args.threads)
    grid = Grid(grid_config(args.bundle, args.seeds, args.limit, args.threads, args.out))
    sides = {
        "reference (run_eval per cell)": reference_side(grid, args.out / "reference"),
        "medfm (run_grid)": runner_side(grid),
    }
    summary = summarise(alternate(sides, args.rounds))
    identical = identical_rows(grid, args.out / "reference")
    print(f"{len(grid.cells)} cells, {args.threads} thread(s); result rows identical: {identical}")
    print(table(summary, "seconds per grid"))
    write_record(args.json, "pcs_grid", vars(args), summary, cells=len(grid.cells), identical_rows=identical)
    if not identical:
        raise SystemExit("the two sides gave different result rows")


if __name__ == "__main__":
    main()
