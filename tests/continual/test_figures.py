"""Continual-learning figures on small result matrices with unmeasured (NaN) scores."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medfm.continual.figures import (
    _draw_result_matrix,
    _draw_strategy_summary,
    plot_experience_curves,
    plot_result_matrix,
    plot_strategy_summary,
)
from medfm.continual.metrics import summarise

NAMES = ["chest X-ray", "dermoscopy", "fundus", "histology"]
NAN = float("nan")


@pytest.fixture
def results() -> dict[str, np.ndarray]:
    """Three strategies on four experiences: one fully measured, one with gaps, one with only a last row."""
    finetune = np.array(
        [
            [0.80, 0.52, 0.48, 0.50],
            [0.62, 0.85, 0.55, 0.51],
            [0.58, 0.66, 0.90, 0.60],
            [0.55, 0.61, 0.70, 0.88],
        ]
    )
    replay = finetune + np.tril(np.full((4, 4), 0.05), k=-1)
    replay[1, 3] = replay[2, 0] = NAN
    joint = np.full((4, 4), NAN)
    joint[-1] = [0.83, 0.84, 0.89, 0.87]
    return {"fine-tune": finetune, "replay": replay, "joint (upper bound)": joint}


def assert_png(path, expected) -> None:
    assert path == expected and path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 300 <= width <= 3000 and 200 <= height <= 2500, image.size


def test_result_matrix(results, tmp_path):
    path = tmp_path / "matrix.png"
    assert_png(plot_result_matrix(results["replay"], NAMES, path, title="replay, four modalities"), path)


def test_result_matrix_leaves_unmeasured_cells_blank(results):
    R = results["replay"]
    figure = _draw_result_matrix(R, NAMES, title="replay", metric="AUROC")
    ax = figure.axes[0]
    cells = {
        (round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in ax.texts
    }
    measured = {(i, j): f"{value:.2f}" for (i, j), value in np.ndenumerate(R) if np.isfinite(value)}
    assert cells == measured  # one label per measured cell, none on (1, 3) and (2, 0)
    assert np.ma.is_masked(ax.images[0].get_array()[1, 3])  # drawn in the colour map's "bad" grey


def test_experience_curves(results, tmp_path):
    path = tmp_path / "curves.png"
    assert_png(plot_experience_curves(results, NAMES, path, metric="AUROC"), path)


def test_experience_curves_of_a_stream_that_does_not_fill_the_panel_grid(results, tmp_path):
    five = ["a", "b", "c", "d", "e"]
    R = np.pad(results["fine-tune"], ((0, 1), (0, 1)), constant_values=0.7)
    path = tmp_path / "five.png"
    assert_png(plot_experience_curves({"fine-tune": R}, five, path), path)


def test_strategy_summary(results, tmp_path):
    summary = {strategy: summarise(R) for strategy, R in results.items()}
    assert np.isnan(summary["joint (upper bound)"]["forgetting"])
    path = tmp_path / "summary.png"
    assert_png(plot_strategy_summary(summary, path), path)
    forgetting_panel = _draw_strategy_summary(summary, "auroc").axes[1]
    # bar_label's annotations sit at their bar's end (xy); the "n/a" text at its own position
    labels = {
        text.get_text().strip(): getattr(text, "xy", text.get_position())[1]
        for text in forgetting_panel.texts
    }
    assert labels == {"0.23": 0, "0.18": 1, "n/a": 2}  # no bar for the strategy without forgetting


def test_rejects_a_matrix_that_does_not_match_the_names(results, tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_result_matrix(results["replay"], NAMES[:3], tmp_path / "x.png", title="x")
    with pytest.raises(ValueError, match="no strategy"):
        plot_experience_curves({}, NAMES, tmp_path / "x.png")
