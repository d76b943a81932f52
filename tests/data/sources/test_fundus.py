from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfm.data.sources.base import check_sample
from medfm.data.sources.fundus import AnnotationError, IdridFundusSource, parse_yolo
from medfm.errors import DataError


def test_idrid_box_totals_match_source_md(dataset):
    # A small max_size keeps the full pass quick (JPEG draft decoding at 1/8 scale).
    source = IdridFundusSource(dataset("fundus-idrid-subset"), max_size=256)
    totals: Counter[str] = Counter()
    samples = {}
    for sample in source:
        check_sample(sample)
        json.dumps(sample["meta"])
        assert sample["image"].shape == (3, 170, 256)
        assert sample["boxes"].dtype == np.float32 and sample["boxes"].shape[1] == 5
        totals.update(sample["meta"]["labels"])
        samples[sample["meta"]["sample_id"]] = sample
    assert len(samples) == 72 and len(source.skips) == 0
    assert totals["n_optic_disc"] == 71
    assert (totals["n_hard_exudates"], totals["hard_exudates"]) == (229, 32)
    assert (totals["n_haemorrhage"], totals["haemorrhage"]) == (184, 39)
    assert samples["0046"]["boxes"].shape == (0, 5)
    assert samples["0046"]["meta"]["labels"]["optic_disc"] == 0
    meta = samples["0001"]["meta"]
    assert meta["box_classes"] == ["optic_disc", "hard_exudates", "haemorrhage"]
    assert (meta["labels"]["n_optic_disc"], meta["labels"]["n_haemorrhage"]) == (1, 26)
    assert (meta["modality"], meta["anatomy"]) == ("fundus", "eye")
    assert "CC BY-SA 4.0" in meta["license"]


def test_default_size_keeps_colour(dataset):
    sample = next(iter(IdridFundusSource(dataset("fundus-idrid-subset"))))
    assert sample["image"].shape == (3, 680, 1024)
    assert sample["image"].dtype == np.uint8
    assert sample["boxes"][0].tolist() == pytest.approx([0, 0.157416, 0.508427, 0.091418, 0.135534], abs=1e-5)


def make_layout(root: Path, labels: dict[str, str]) -> None:
    (root / "images").mkdir()
    (root / "yolo_labels").mkdir()
    (root / "retinal.names").write_text("optic_disc\nhard_exudates\nhaemorrhage\n")
    rng = np.random.default_rng(0)
    for stem in ("0001", "0002", "0003"):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}.jpg"
        )
    for stem, text in labels.items():
        (root / "yolo_labels" / f"{stem}.txt").write_text(text)


def test_malformed_label_file_skips_its_image(tmp_path):
    make_layout(tmp_path, {"0001": "0 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.05 0.05", "0002": "0 0.5 0.5 0.2\n"})
    source = IdridFundusSource(tmp_path)
    samples = list(source)
    assert [s["meta"]["sample_id"] for s in samples] == ["0001", "0003"]
    assert samples[0]["boxes"][:, 0].tolist() == [0, 2]
    assert samples[0]["meta"]["labels"] == {
        "optic_disc": 1,
        "hard_exudates": 0,
        "haemorrhage": 1,
        "n_optic_disc": 1,
        "n_hard_exudates": 0,
        "n_haemorrhage": 1,
    }
    assert samples[1]["boxes"].shape == (0, 5)
    assert source.skips.counts() == {"bad_annotation": 1}
    assert source.skips.records[0].path == "yolo_labels/0002.txt"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("3 0.5 0.5 0.1 0.1", "class 3"), ("0 1.5 0.5 0.1 0.1", "not normalised"), ("0 a b c d", "not numbers")],
)
def test_parse_yolo_rejects(text, problem):
    with pytest.raises(AnnotationError, match=problem):
        parse_yolo(text, n_classes=3)


def test_missing_names_or_images_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"retinal\.names"):
        IdridFundusSource(tmp_path)
    (tmp_path / "retinal.names").write_text("optic_disc\n")
    with pytest.raises(DataError, match=r"no \.jpg images"):
        IdridFundusSource(tmp_path)


def test_symlink_leaving_the_folder_is_a_data_error(tmp_path):
    root = tmp_path / "idrid"
    root.mkdir()
    make_layout(root, {})
    (tmp_path / "notes.txt").write_text("not a label file\n")
    (root / "yolo_labels" / "0002.txt").symlink_to(tmp_path / "notes.txt")
    with pytest.raises(DataError, match=r"path 'yolo_labels/0002\.txt' leaves the folder"):
        IdridFundusSource(root)
