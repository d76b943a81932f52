"""A scaling grid end to end on a tiny real corpus and a folder task: cells pretrain and probe, the runs
and points tables hold what the fits need, the fits, figures and report are written, and a finished grid
resumes without training again."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medfm.cli import app
from medfm.errors import ConfigError, DataError
from medfm.pcs.grid import load_grid
from medfm.pretrain.build import build_method
from medfm.pretrain.config import PretrainConfig
from medfm.scale.stage import _random_batch, pretraining_pictures, training_flops_per_image
from medfm.scale.study import load_scale_grid, run_scale

pytestmark = pytest.mark.slow


def write_grid(root: Path, corpus: Path, folder: Path) -> Path:
    grid = {
        "name": "tiny-scale",
        "stage": "scale",
        "output": str(root / "scale"),
        "workers": 0,
        "base": {
            "pretrain": {
                "image_size": 32,
                "data": {"corpus": str(corpus)},
                "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
                "train": {"batch_size": 32, "log_every": 2, "checkpoint_every": 0},
            },
            "epochs": 1,
            "heldout_pictures": 16,
            "eval": {
                "tasks": ["image_folder"],
                "task_options": {
                    "image_folder": {"root": str(folder), "label_column": "finding", "id_column": "patient"}
                },
                "n_boot": 20,
            },
        },
        "axes": {
            "size": {"key": "pretrain.encoder", "values": ["test_vit", "vit_pico_patch8"]},
            "data": {"key": "pretrain.data.fraction", "values": [0.5, 1.0]},
        },
        "report_metrics": ["auroc"],
    }
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_corpus, image_folder_writer) -> Path:
    root = tmp_path_factory.mktemp("scale")
    folder = image_folder_writer(root / "scans", spread=40)
    run_scale(load_scale_grid(write_grid(root, tiny_corpus, folder)))
    return root


def test_epochs_set_the_steps_of_each_cell(finished):
    grid = load_scale_grid(finished / "grid.yaml")
    for cell in grid.cells:
        config = grid.cell_config(cell)
        pictures = pretraining_pictures(config.pretrain)
        assert config.pretrain.train.steps == math.ceil(pictures / 32)
        assert config.pretrain.train.warmup_steps == round(0.1 * config.pretrain.train.steps)


def test_runs_and_points_hold_what_the_fits_need(finished):
    out = finished / "scale"
    runs = pd.read_csv(out / "scaling_runs.csv")
    assert len(runs) == 4 and (runs["method"] == "mae").all() and (runs["mix"] == "all").all()
    assert runs.groupby("model")["parameters"].nunique().eq(1).all()
    assert runs["parameters"].nunique() == 2
    half, full = (runs[runs["fraction"] == f]["pictures"].iloc[0] for f in (0.5, 1.0))
    assert abs(half / full - 0.5) < 0.01
    assert (runs["images_seen"] == runs["steps"] * 32).all()
    assert (runs["train_flops"] > 0).all() and runs["heldout_loss"].map(math.isfinite).all()
    # FLOPs per image grow with the model; the whole run's FLOPs with the pictures
    per_image = runs["train_flops"] / runs["images_seen"]
    assert per_image.groupby(runs["model"]).nunique().eq(1).all() and per_image.nunique() == 2
    points = pd.read_csv(out / "scaling_points.csv")
    auroc = points[points["metric"] == "auroc"]
    assert len(auroc) == 4 and set(auroc["task"]) == {"image_folder"}
    assert auroc["value"].between(0, 1).all()


def test_fits_figures_and_report_are_written(finished):
    out = finished / "scale"
    fits = pd.read_csv(out / "scaling_fits.csv")
    joint = fits[fits["law"] == "joint"]
    assert set(joint["variable"]) == {"parameters", "pictures"} and (joint["n"] == 4).all()
    assert set(fits[fits["law"] == "single"]["variable"]) == {"train_flops"}
    assert (fits["boot_fits"] > 0).all() and (fits["boot_low"] <= fits["boot_high"]).all()
    factors = pd.read_csv(out / "task_factors.csv")
    assert factors.loc[0, "n_classes"] == 2 and 0 < factors.loc[0, "gzip_ratio"] < 1.5
    frontier = pd.read_csv(out / "loss_frontier.csv")
    assert frontier["on_frontier"].any()
    markdown = (out / "scaling.md").read_text()
    for heading in ("## Summary", "## Scaling curves", "## Held-out loss against compute", "## Runs"):
        assert heading in markdown
    for figure in ("curves-image_folder.png", "compute.png", "loss-frontier.png"):
        assert (out / "figures" / "scaling" / figure).stat().st_size > 10_000
    assert "<img" in (out / "scaling.html").read_text()
    assert (out / "report.html").is_file()  # the PCS report of the same grid


def test_a_finished_grid_resumes_without_training_again(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    grid_file = tmp_path / "grid.yaml"
    grid = yaml.safe_load(grid_file.read_text())
    grid["output"] = str(tmp_path / "scale")
    grid_file.write_text(yaml.safe_dump(grid, sort_keys=False))
    bundles = sorted((tmp_path / "scale" / "cells").glob("*/pretrain/bundle/model.safetensors"))
    before = [p.stat().st_mtime_ns for p in bundles]
    result = CliRunner().invoke(app, ["scale", "--grid", str(grid_file)])
    assert result.exit_code == 0, result.output
    assert "scaling report" in result.output
    assert [p.stat().st_mtime_ns for p in bundles] == before


def test_only_scale_grids_are_accepted(tmp_path):
    grid = {"name": "e", "stage": "eval", "axes": {"seed": {"key": "seed", "values": [0, 1]}}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    load_grid(path)  # a valid eval grid
    with pytest.raises(ConfigError, match="'eval' grid"):
        load_scale_grid(path)


def test_training_flops_count_the_backward_pass():
    config = PretrainConfig(encoder="vit_pico_patch4", image_size=32, method="mae")
    per_image = training_flops_per_image(config)
    from torch.utils.flop_counter import FlopCounterMode

    method = build_method(config)
    batch = _random_batch(config, method, 2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method(batch)
    forward = counter.get_total_flops() / 2
    assert 2.5 < per_image / forward < 3.5  # backward costs about twice the forward
    bigger = PretrainConfig(encoder="vit_nano_patch4", image_size=32, method="mae")
    assert training_flops_per_image(bigger) > per_image


@pytest.mark.parametrize("name", ["vit-ladder-32px", "vit-tsb-224px"])
def test_shipped_grids_load(name, tiny_corpus):
    path = Path(__file__).parents[2] / "configs" / "scale" / f"{name}.yaml"
    grid = load_scale_grid(path, [f"base.pretrain.data.corpus={tiny_corpus}"])
    assert len(grid.cells) == 18 and grid.output == Path(f"runs/scale/{name}")
    methods = {grid.cell_config(cell).pretrain.method for cell in grid.cells}
    assert methods == {"mae", "dino"}


def _broken(grid: dict, where: str) -> None:
    if where == "encoder":
        grid["axes"]["size"]["values"][0] = "vit_pico_patch5"
    elif where == "method":
        grid["axes"]["method"]["alternatives"]["mae"] = {"pretrain.method": "simclr"}
    elif where == "dino":
        grid["base"]["pretrain"]["dino"] = {"center_momentum": 2.0}
    elif where == "fraction":
        grid["axes"]["data"]["values"][0] = 0.0
    else:
        grid["base"]["epochs"] = -1


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("encoder", "vit_pico_patch4"),  # "did you mean"
        ("method", "simclr"),
        ("dino", "center_momentum"),
        ("fraction", "fraction"),
        ("epochs", "epochs"),
    ],
)
def test_bad_cells_are_refused_when_the_grid_loads(where, message, tiny_corpus, tmp_path):
    shipped = Path(__file__).parents[2] / "configs" / "scale" / "vit-ladder-32px.yaml"
    grid = yaml.safe_load(shipped.read_text())
    grid["base"]["pretrain"]["data"]["corpus"] = str(tiny_corpus)
    _broken(grid, where)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises((ConfigError, DataError), match=message):
        load_scale_grid(path)


def test_a_runs_data_mix_is_named_by_its_axis_or_its_filters():
    from medfm.scale.study import mix_name

    def config(modalities=(), sources=()):
        return {"pretrain": {"data": {"modalities": list(modalities), "sources": list(sources)}}}

    assert mix_name(config(), {}) == "all"
    assert mix_name(config(["xray", "ct"]), {}) == "xray+ct"
    assert mix_name(config(sources=["pneumoniamnist"]), {}) == "pneumoniamnist"
    assert mix_name(config(["xray"]), {"mix": "chest only"}) == "chest only"
