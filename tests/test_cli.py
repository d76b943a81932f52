"""The command line: clear one-line errors for bad input, skips counted by reason, quickstart offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medfm.cli import app

runner = CliRunner()


def _image_folder(root: Path, rows: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / name)
    with open(root / "broken.jpg", "wb") as handle:  # a JPEG cut short
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(handle, format="JPEG")
    (root / "broken.jpg").write_bytes((root / "broken.jpg").read_bytes()[:300])
    (root / "labels.csv").write_text("\n".join(["path,label", *rows]) + "\n")
    return root


def _config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "corpus.yaml"
    path.write_text(
        f"output: {tmp_path / 'corpus'}\nimage_size: 32\nworkers: 1\n"
        f"sources:\n  - adapter: image_folder\n    root: {root}\n    options: {{modality: dermoscopy}}\n"
    )
    return path


def test_build_counts_skipped_files_by_reason(tmp_path):
    root = _image_folder(tmp_path / "images", ["a.png,x", "b.png,y", "c.png,x", "broken.jpg,x", "gone.png,y"])
    result = runner.invoke(app, ["data", "build", "--config", str(_config(tmp_path, root))])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "corpus" / "summary.json").read_text())
    assert summary["images"] == 3
    assert summary["skipped_by_reason"] == {"unreadable_image": 1, "missing_file": 1}


def test_empty_labels_csv_is_one_clear_error(tmp_path):
    root = _image_folder(tmp_path / "images", [])
    (root / "labels.csv").write_text("")
    result = runner.invoke(app, ["data", "build", "--config", str(_config(tmp_path, root))])
    assert result.exit_code == 2
    assert "labels.csv" in result.output and "empty" in result.output
    assert "Traceback" not in result.output


def test_bad_override_is_one_clear_error(tmp_path):
    root = _image_folder(tmp_path / "images", ["a.png,x"])
    result = runner.invoke(app, ["data", "build", "--config", str(_config(tmp_path, root)), "image_size=big"])
    assert result.exit_code == 2 and "image_size" in result.output


def test_sources_and_query(tmp_path):
    listed = runner.invoke(app, ["data", "sources", "icu*"])
    assert listed.exit_code == 0 and "physionet" not in listed.output  # wildcard filters
    assert "dicom" in runner.invoke(app, ["data", "sources"]).output
    root = _image_folder(tmp_path / "images", ["a.png,x", "b.png,y"])
    assert runner.invoke(app, ["data", "build", "--config", str(_config(tmp_path, root))]).exit_code == 0
    query = runner.invoke(
        app, ["data", "query", "--corpus", str(tmp_path / "corpus"), "SELECT count(*) AS n FROM catalog"]
    )
    assert query.exit_code == 0 and "2" in query.output
    bad = runner.invoke(
        app, ["data", "query", "--corpus", str(tmp_path / "corpus"), "SELECT nope FROM catalog"]
    )
    assert bad.exit_code == 2 and "query failed" in bad.output


@pytest.mark.slow
def test_quickstart_runs_offline_on_shipped_files(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDFM_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["quickstart", "--out", "qs", "--pretrain-steps", "3"])  # relative path
    assert result.exit_code == 0, result.output
    assert (tmp_path / "qs" / "pretrain" / "bundle" / "model.safetensors").is_file()
    assert len((tmp_path / "qs" / "pretrain" / "metrics.jsonl").read_text().splitlines()) == 3
    summary = json.loads((tmp_path / "qs" / "corpus" / "summary.json").read_text())
    assert (
        summary["sources"] == 2 and summary["modalities"] == 2 and summary["subjects_in_several_splits"] == 0
    )
    card = (tmp_path / "qs" / "corpus" / "card" / "DATA_CARD.md").read_text()
    assert "## Licenses and citations" in card
    assert (tmp_path / "qs" / "corpus" / "card" / "samples-mr.png").is_file()
    assert not (tmp_path / "qs" / "eval").exists()  # no labels offline: nothing evaluated


@pytest.mark.slow
def test_quickstart_with_data_evaluates_its_encoder(tmp_path, monkeypatch, data_root):
    import medfm.quickstart as quickstart

    small = quickstart.quickstart_eval_config

    def smaller(out):
        config = small(out)
        config.limit, config.n_boot = 200, 50
        return config

    monkeypatch.setattr(quickstart, "quickstart_eval_config", smaller)
    result = runner.invoke(app, ["quickstart", "--out", str(tmp_path / "qs"), "--pretrain-steps", "2"])
    assert result.exit_code == 0, result.output
    comparisons = (tmp_path / "qs" / "eval" / "comparisons.csv").read_text()
    assert "pretrain (linear_probe),vit_tiny_patch8 (random init) (linear_probe)" in comparisons
    assert "pixels_logreg (classical)" in comparisons
    assert (tmp_path / "qs" / "eval" / "report.html").is_file()
