"""A grid end to end on a folder of images and a tiny bundle: tidy table, check, summaries, report,
resume, `medfm pcs report` (the report again from stored results) and `medfm pcs reproduce` (which must
also notice a row that does not match)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medfm.cli import app
from medfm.models.bundle import save_bundle
from medfm.models.encoders import create_encoder
from medfm.pcs.grid import load_grid
from medfm.pcs.reproduce import reproduce
from medfm.pcs.runner import read_rows, rebuild_report, run_grid
from medfm.pcs.stability import UNIT


def write_grid(tmp_path, write_image_folder) -> Path:
    folder = write_image_folder(tmp_path / "scans", spread=60)  # overlapping classes: results move
    torch.manual_seed(1)  # the same weights whichever tests ran before (the random twin uses seed 0)
    encoder = create_encoder("test_vit", in_chans=1, img_size=32)
    config = {"encoder": {"name": "test_vit", "in_chans": 1, "img_size": 32}}
    bundle = save_bundle(tmp_path / "tiny-mae" / "bundle", encoder.state_dict(), config)
    grid = {
        "name": "tiny",
        "output": str(tmp_path / "pcs"),
        "workers": 0,
        "base": {
            "encoder": str(bundle),
            "tasks": ["image_folder"],
            "task_options": {
                "image_folder": {"root": str(folder), "label_column": "finding", "id_column": "patient"}
            },
            "protocols": ["linear_probe", "knn"],
            "baselines": ["random_init"],
            "random_init_seed": 0,
            "n_boot": 20,
        },
        "axes": {
            "seed": {"key": "seed", "values": [0, 1]},
            "train_data": {
                "alternatives": {
                    "bootstrap": {"train_subsample.mode": "bootstrap"},
                    "half": {"train_subsample": {"mode": "fraction", "fraction": 0.5}},
                }
            },
            "resolution": {"key": "image_size", "values": [16, 32]},
        },
        "check": {"metric": "auroc", "minimum": 0.8},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture
def grid_file(tmp_path, image_folder_writer):
    return write_grid(tmp_path, image_folder_writer)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, image_folder_writer) -> Path:
    """A grid run once for the tests that only read it (or copy it first): its folder."""
    root = tmp_path_factory.mktemp("finished")
    run_grid(load_grid(write_grid(root, image_folder_writer)))
    return root


@pytest.fixture
def finished_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_grid_writes_a_tidy_table_summaries_and_the_report(finished):
    out = finished / "pcs"
    results = read_rows(out / "results.csv")
    assert set(results["cell"]) == {f"c{i}" for i in range(8)}
    assert list(results.columns[:4]) == ["cell", "seed", "train_data", "resolution"]
    assert set(UNIT) <= set(results.columns) and set(results["split"]) == {"val", "test"}
    # each (cell, model, protocol) passes or fails as a whole, by its validation AUROC
    val = results[(results.split == "val") & (results.metric == "auroc")].set_index(
        ["cell", "model", "protocol"]
    )
    for (cell, model, protocol), group in results.groupby(["cell", "model", "protocol"]):
        assert set(group["passed"]) == {bool(val.loc[(cell, model, protocol), "value"] >= 0.8)}
    assert results["passed"].any() and not results["passed"].all()  # the check kept some runs, not all

    def probe_auroc_on_test(table):
        return table[
            (table.model == "tiny-mae")
            & (table.protocol == "linear_probe")
            & (table.metric == "auroc")
            & (table.split == "test")
            & (table.eval_set == "test")
        ]

    probe = probe_auroc_on_test(pd.read_csv(out / "stability_passing.csv", keep_default_na=False))
    kept = probe_auroc_on_test(results[results.passed])
    assert probe["cells"].item() == len(kept)
    assert probe["mean"].item() == pytest.approx(kept["value"].mean())
    assert probe["top_axis"].item() in {"seed", "train_data", "resolution"}

    agreement = pd.read_csv(out / "agreement.csv")
    test_size = results.loc[results.split == "test", "n"].max()
    assert set(agreement["protocol"]) == {"linear_probe", "knn"} and (agreement["items"] == test_size).all()
    assert agreement["fleiss_kappa"].between(-1, 1).all()
    compute = pd.read_csv(out / "compute.csv")
    assert (compute["parameters"] > 0).all() and (compute["wall_seconds"] > 0).all()
    flops = compute.groupby("resolution")["flops_per_example"].first()
    assert flops[32] > 3 * flops[16]  # 4x the patches at twice the side
    assert (compute["energy_wh"] > 0).all()

    report = (out / "report.html").read_text()
    for heading in (
        "Predictability",
        "Stability",
        "Rank stability",
        "Computability",
        "Data card",
        "Reproducibility",
    ):
        assert heading in report
    assert report.count("<img") == 2 and "medfm pcs reproduce" in (out / "pcs.md").read_text()
    provenance = json.loads((out / "provenance.json").read_text())
    assert {"task image_folder", "encoder"} == set(provenance["data"])


def read_summary(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={c: str for c in UNIT}).fillna({c: "" for c in UNIT})


def test_summaries_cover_every_cell_and_the_passing_view_is_a_table_of_its_own(finished):
    out = finished / "pcs"
    results = read_rows(out / "results.csv")
    scored = results[results["value"].notna()]
    unit = list(UNIT)

    def expected(rows):
        grouped = rows.groupby(unit)
        return grouped.agg(cells=("value", "size"), mean=("value", "mean")).join(
            scored.groupby(unit).agg(n_pass=("passed", "sum"), pass_rate=("passed", "mean"))
        )

    for name, rows in (("stability", scored), ("stability_passing", scored[scored["passed"]])):
        table = read_summary(out / f"{name}.csv").set_index(unit).sort_index()
        want = expected(rows).sort_index()
        assert list(table.index) == list(want.index), name  # every unit with a value, no more
        assert table["cells"].tolist() == want["cells"].tolist()
        assert table["n_pass"].tolist() == want["n_pass"].tolist()
        np.testing.assert_allclose(table[["mean", "pass_rate"]], want[["mean", "pass_rate"]], rtol=1e-12)

    runs = results[["cell", "model", "protocol", "passed"]].drop_duplicates()
    agreement = read_summary(out / "agreement.csv").set_index(["model", "protocol"]).sort_index()
    passing = read_summary(out / "agreement_passing.csv").set_index(["model", "protocol"])
    assert len(agreement) == runs.groupby(["model", "protocol"]).ngroups  # every model, passing or not
    assert (agreement["raters"] == 8).all()
    assert agreement["n_pass"].tolist() == runs.groupby(["model", "protocol"])["passed"].sum().tolist()
    assert (passing["raters"] == passing["n_pass"]).all() and set(passing.index) <= set(agreement.index)
    for name in ("effects", "ranks", "wins"):
        assert {"n_pass", "pass_rate"} <= set(read_summary(out / f"{name}_passing.csv").columns)
    markdown = (out / "pcs.md").read_text()
    assert "pass)" in markdown and markdown.count("**Passing cells only**") == 5


def test_the_report_is_rebuilt_from_stored_results_without_running_a_cell(finished_copy):
    out = finished_copy / "pcs"
    ran = {name: read_summary(out / f"{name}.csv") for name in ("stability", "ranks_passing", "agreement")}
    record = out / "cells" / "c3" / "cell.json"
    before = record.stat().st_mtime_ns
    (out / "pcs.md").unlink()
    result = CliRunner().invoke(app, ["pcs", "report", str(out)])
    assert result.exit_code == 0, result.output
    assert record.stat().st_mtime_ns == before and (out / "pcs.md").is_file()
    for name, table in ran.items():
        pd.testing.assert_frame_equal(read_summary(out / f"{name}.csv"), table)

    # Only the tables kept (as in results/): agreement is reused as stored, the rest computed again.
    stored_passing = read_summary(out / "agreement_passing.csv")
    shutil.rmtree(out / "cells")
    (out / "agreement.csv").unlink()
    paths = rebuild_report(out)
    pd.testing.assert_frame_equal(read_summary(paths["stability.csv"]), ran["stability"])
    pd.testing.assert_frame_equal(read_summary(paths["agreement_passing.csv"]), stored_passing)
    assert read_summary(paths["agreement.csv"]).empty
    assert "no predicted test labels of these cells are stored" in paths["pcs.md"].read_text()

    missing = CliRunner().invoke(app, ["pcs", "report", str(finished_copy / "nowhere")])
    assert missing.exit_code == 2 and "not a finished PCS run folder" in missing.output


def test_a_finished_grid_resumes_without_running_its_cells_again(finished_copy):
    tmp_path = finished_copy
    grid = load_grid(tmp_path / "grid.yaml", [f"output={tmp_path / 'pcs'}"])
    record = tmp_path / "pcs" / "cells" / "c3" / "cell.json"
    before = record.stat().st_mtime_ns
    (tmp_path / "pcs" / "cells" / "c5" / "cell.json").unlink()  # as if stopped before c5 finished
    run_grid(grid)
    assert record.stat().st_mtime_ns == before
    assert (tmp_path / "pcs" / "cells" / "c5" / "cell.json").is_file()


def test_reproduce_matches_exactly_and_notices_a_changed_row(finished_copy):
    out = finished_copy / "pcs"
    result = reproduce(out, cell="c6")
    assert result.matches and len(result.compared) > 20
    results = pd.read_csv(out / "results.csv", keep_default_na=False, dtype=str)
    row = int(results.index[(results.cell == "c6") & (results.metric == "auroc")][0])
    results.loc[row, "value"] = "0.123"
    results.to_csv(out / "results.csv", index=False)
    changed = reproduce(out, row=row)
    assert not changed.matches and len(changed.mismatches) == 1
    assert changed.mismatches["value recorded"].item() == 0.123

    cli = CliRunner()
    bad = cli.invoke(app, ["pcs", "reproduce", str(out), "--row", str(row)])
    assert bad.exit_code == 1 and "not reproduced" in bad.output
    good = cli.invoke(app, ["pcs", "reproduce", str(out), "--cell", "c1"])
    assert good.exit_code == 0 and "reproduced" in good.output
    missing = cli.invoke(app, ["pcs", "reproduce", str(out), "--cell", "c99"])
    assert missing.exit_code == 2 and "no cell 'c99'" in missing.output


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(grid_file, tmp_path):
    grid = yaml.safe_load(grid_file.read_text())
    # one training patient holds a single class: that cell cannot fit a classifier
    grid["axes"] = {
        "train_data": {
            "alternatives": {
                "half": {"train_subsample": {"mode": "fraction", "fraction": 0.5}},
                "one_patient": {"train_subsample": {"mode": "fraction", "fraction": 0.01}},
            }
        }
    }
    grid_file.write_text(yaml.safe_dump(grid, sort_keys=False))
    run_grid(load_grid(grid_file))
    records = {
        p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "pcs" / "cells").glob("*/cell.json")
    }
    assert records["c0"]["status"] == "ok" and records["c1"]["status"] == "failed"
    assert "no longer holds every outcome" in records["c1"]["error"]
    assert "Failed cells" in (tmp_path / "pcs" / "pcs.md").read_text()


def test_a_changed_config_runs_its_cells_again(finished_copy):
    grid = load_grid(finished_copy / "grid.yaml", [f"output={finished_copy / 'pcs'}", "base.n_boot=21"])
    record = finished_copy / "pcs" / "cells" / "c0" / "cell.json"
    before = record.stat().st_mtime_ns
    run_grid(grid)
    assert record.stat().st_mtime_ns != before and json.loads(record.read_text())["config"]["n_boot"] == 21


def test_cli_runs_a_grid(finished_copy):
    grid_file = finished_copy / "grid.yaml"
    out = f"output={finished_copy / 'pcs'}"
    result = CliRunner().invoke(app, ["pcs", "run", "--grid", str(grid_file), out])  # resumes: nothing to run
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    bad = CliRunner().invoke(app, ["pcs", "run", "--grid", str(grid_file), "base.protocols=[probe]"])
    assert bad.exit_code == 2 and "probe" in bad.output


@pytest.mark.multiprocess
def test_cells_run_in_worker_processes(grid_file, tmp_path):
    grid = load_grid(grid_file, ["workers=2"])
    run_grid(grid)
    records = [json.loads(p.read_text()) for p in (tmp_path / "pcs" / "cells").glob("*/cell.json")]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    # cells that share a resolution share a process, so each worker encodes its images once
    cached = pd.read_csv(tmp_path / "pcs" / "compute.csv").groupby("resolution")["features_cached"].sum()
    assert (cached == 6).all()  # 4 cells x 2 models per resolution, the first cell of each encodes


def test_workers_are_balanced_by_the_stage_cost_and_shared_work_stays_together():
    from types import SimpleNamespace

    from medfm.pcs.grid import Cell
    from medfm.pcs.runner import assign

    costs = {"c0": 10.0, "c1": 1.0, "c2": 1.0, "c3": 4.0, "c4": 4.0, "c5": 1.0}
    cells = [Cell(i, {}, {}) for i in costs]
    plain = SimpleNamespace(affinity=lambda cell: "", cost=lambda cell: costs[cell.id])
    grid = SimpleNamespace(stage=plain, cell_config=lambda cell: cell)
    lanes = assign(cells, grid, 2)
    assert sorted(sum(costs[c.id] for c in lane) for lane in lanes) == [10.0, 11.0]  # not 3 and 3 cells
    assert lanes[0][0].id == "c0"  # the costliest first
    shared = SimpleNamespace(affinity=lambda cell: "a" if cell.id in ("c1", "c2") else "", cost=plain.cost)
    lanes = assign(cells, SimpleNamespace(stage=shared, cell_config=lambda cell: cell), 2)
    assert any({"c1", "c2"} <= {c.id for c in lane} for lane in lanes)
