"""A small grid on real chest X-rays (PneumoniaMNIST): every cell tests the same patients, the summaries
cover every cell, and a cell reproduces exactly."""

from __future__ import annotations

import pandas as pd
import pytest

from medfm.pcs.grid import Grid, GridConfig, PredictionCheck
from medfm.pcs.reproduce import reproduce
from medfm.pcs.runner import load_predicted, read_rows, run_grid
from medfm.pcs.stability import UNIT


@pytest.mark.slow
def test_a_grid_on_pneumoniamnist(data_root, tmp_path):
    grid = Grid(
        GridConfig(
            name="real",
            output=str(tmp_path / "pcs"),
            workers=0,
            base={
                "encoder": "test_vit",  # a tiny random ViT: the grid machinery, not the encoder, is tested
                "tasks": ["pneumoniamnist"],
                "protocols": ["linear_probe", "knn"],
                "baselines": [],
                "limit": 400,
                "n_boot": 20,
            },
            axes={
                "seed": {"key": "seed", "values": [0, 1]},
                "train_data": {
                    "alternatives": {
                        "bootstrap": {"train_subsample": {"mode": "bootstrap"}},
                        "half": {"train_subsample": {"mode": "fraction", "fraction": 0.5}},
                    }
                },
            },
            check=PredictionCheck(metric="auroc", minimum=0.6),
        )
    )
    run_grid(grid)
    results = read_rows(tmp_path / "pcs" / "results.csv")
    probe = results[
        (results.protocol == "linear_probe") & (results.metric == "auroc") & (results.split == "test")
    ]
    assert len(probe[probe.eval_set == "test"]) == 4 and probe["value"].between(0.6, 1).all()
    tested = [
        sorted(p.sample_ids)
        for cell in ("c0", "c1", "c2", "c3")
        for p in load_predicted(tmp_path / "pcs" / "cells" / cell / "predicted.npz")
        if p.unit["protocol"] == "linear_probe"
    ]
    # subsamples and seeds never touch the test patients
    assert len(tested) == 4 and all(ids == tested[0] for ids in tested)
    # every number is summarised over exactly the cells that produced it, with their pass count
    stability = pd.read_csv(tmp_path / "pcs" / "stability.csv", dtype={c: str for c in UNIT})
    summarised = stability.fillna({c: "" for c in UNIT}).set_index(list(UNIT))[["cells", "n_pass"]]
    scored = results[results["value"].notna()].groupby(list(UNIT))
    expected = scored.agg(cells=("cell", "nunique"), n_pass=("passed", "sum"))
    pd.testing.assert_frame_equal(summarised.sort_index(), expected.sort_index(), check_dtype=False)
    test_auroc = summarised.xs(
        ("test", "all", "auroc", "test"), level=["eval_set", "subgroup", "metric", "split"]
    )
    assert len(test_auroc) == 2 and (test_auroc["cells"] == 4).all()  # probe and kNN, passing or not
    assert reproduce(tmp_path / "pcs", cell="c3").matches
