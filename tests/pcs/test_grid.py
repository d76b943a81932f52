"""Grids: axes of named alternatives, cells, and the checks that fail before any work starts."""

from __future__ import annotations

import pytest

from medfm.errors import ConfigError
from medfm.pcs.grid import Grid, GridConfig, PredictionCheck, load_grid, nested


def eval_grid(axes: dict, **base) -> Grid:
    return Grid(GridConfig(name="g", stage="eval", base={"encoder": "test_vit", **base}, axes=axes))


def test_cells_are_the_product_of_the_axes_with_every_choice_named():
    grid = eval_grid(
        {
            "seed": {"key": "seed", "values": [0, 1, 2]},
            "train_data": {
                "alternatives": {
                    "boot": {"train_subsample.mode": "bootstrap"},
                    "half": {"train_subsample": {"mode": "fraction", "fraction": 0.5}},
                }
            },
        }
    )
    assert len(grid) == len(grid.cells) == 6
    assert [c.id for c in grid.cells] == ["c0", "c1", "c2", "c3", "c4", "c5"]
    assert grid.cells[3].choices == {"seed": "1", "train_data": "half"}
    config = grid.cell_config(grid.cells[3])
    assert (config.seed, config.train_subsample.mode, config.train_subsample.fraction) == (1, "fraction", 0.5)
    # the stage's own settings for grid cells apply, and the base wins over them
    assert config.score_val and not config.report and config.encoder == "test_vit"


def test_value_axes_can_name_their_alternatives():
    grid = eval_grid({"size": {"key": "image_size", "values": [48, 64], "names": ["small", "native"]}})
    assert [c.choices["size"] for c in grid.cells] == ["small", "native"]
    assert grid.cell_config(grid.cells[1]).image_size == 64


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"seed": {"key": "seed", "values": [0]}}, "at least two"),
        ({"seed": {"values": [0, 1]}}, "either 'key' and 'values'"),
        ({"model": {"key": "seed", "values": [0, 1]}}, "results-table columns"),
        (
            {
                "a": {"key": "seed", "values": [0, 1]},
                "b": {"alternatives": {"x": {"seed": 2}, "y": {"seed": 3}}},
            },
            "both set 'seed'",
        ),
        ({"typo": {"key": "image_sise", "values": [1, 2]}}, "image_sise"),
        ({"mode": {"key": "train_subsample.mode", "values": ["all", "jackknife"]}}, "jackknife"),
        ({}, "no axes"),
    ],
)
def test_bad_grids_are_refused_before_any_cell_runs(axes, message):
    with pytest.raises(ConfigError, match=message):
        eval_grid(axes)


def test_a_check_or_report_metric_the_stage_lacks_is_named():
    axes = {"seed": {"key": "seed", "values": [0, 1]}}
    with pytest.raises(ConfigError, match="aucroc"):
        Grid(
            GridConfig(
                name="g", base={"encoder": "test_vit"}, axes=axes, check=PredictionCheck(metric="aucroc")
            )
        )
    with pytest.raises(ConfigError, match="sensitivity"):
        Grid(GridConfig(name="g", base={"encoder": "test_vit"}, axes=axes, report_metrics=["sensitivity"]))


def test_unknown_stage_is_named():
    with pytest.raises(ConfigError, match="pretrian"):
        Grid(GridConfig(name="g", stage="pretrian", axes={"s": {"key": "seed", "values": [0, 1]}}))


def test_grid_yaml_and_overrides(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "name: demo\nbase: {encoder: test_vit}\naxes:\n  seed: {key: seed, values: [0, 1]}\n"
        "check: {metric: auroc, minimum: 0.7}\n"
    )
    grid = load_grid(path, ["workers=0", "base.n_boot=7"])
    assert grid.config.workers == 0 and grid.output.as_posix() == "runs/pcs/demo"
    assert grid.cell_config(grid.cells[0]).n_boot == 7
    assert grid.config.check.passes(0.7) and not grid.config.check.passes(0.69)


def test_prediction_check_bounds_and_undefined_scores():
    check = PredictionCheck(metric="ece", maximum=0.1)
    assert check.passes(0.05) and not check.passes(0.2) and not check.passes(float("nan"))
    assert check.describe() == "validation ece <= 0.1"
    assert PredictionCheck().describe() == "none"


def test_nested_mixes_dotted_and_nested_keys():
    assert nested({"a.b": 1, "a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}
