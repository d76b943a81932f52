"""A folder of images in the generic ``images/`` + ``labels.csv`` layout, built by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image_folder(root: Path, patients: int = 60, per_patient: int = 2, channels: int = 1) -> Path:
    """Two classes told apart by brightness; each patient has ``per_patient`` images of one class."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,patient,finding"]
    for patient in range(patients):
        finding = "effusion" if patient % 2 else "normal"
        for k in range(per_patient):
            level = 170 if finding == "effusion" else 70
            pixels = np.clip(rng.normal(level, 30, size=(32, 32, channels)), 0, 255).astype(np.uint8)
            name = f"images/p{patient:03d}_{k}.png"
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(root / name)
            rows.append(f"{name},P{patient:03d},{finding}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "dataset")


@pytest.fixture
def make_image_folder(tmp_path):
    """``make_image_folder("rgb", channels=3)`` builds another folder under the test's tmp_path."""
    return lambda name, **options: write_image_folder(tmp_path / name, **options)
