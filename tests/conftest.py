"""Shared fixtures. Real data comes from MEDFM_DATA_ROOT; without it, data tests skip and say why."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("MEDFM_DATA_ROOT")
    if not root:
        pytest.skip("MEDFM_DATA_ROOT is not set: real-data test skipped")
    path = Path(root)
    if not path.is_dir():
        pytest.fail(f"MEDFM_DATA_ROOT={root} is not a folder")
    return path


@pytest.fixture(scope="session")
def dataset(data_root: Path):
    """``dataset("vqa-rad")`` is ``data_root / "vqa-rad"``; a missing folder fails the test, not skips it."""

    def folder(name: str) -> Path:
        path = data_root / name
        if not path.is_dir():
            pytest.fail(f"expected dataset folder {path} is missing")
        return path

    return folder


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, dataset) -> Path:
    """A small real corpus at 32 px (PneumoniaMNIST chest X-rays and MSD CT/MR slices), built once."""
    from medfm.data.corpus import CorpusConfig, SourceSpec, build_corpus

    out = tmp_path_factory.mktemp("corpus") / "tiny"
    config = CorpusConfig(
        output=str(out),
        image_size=32,
        sources=[
            SourceSpec(adapter="pneumoniamnist", root=str(dataset("pneumoniamnist")), max_samples=320),
            SourceSpec(adapter="npy_slices", root=str(dataset("msd-2d-slices"))),
        ],
        shard_size=64,
        workers=1,
    )
    build_corpus(config)
    return out


# A folder of images in the generic ``images/`` + ``labels.csv`` layout (evaluation and PCS tests).
def write_image_folder(
    root: Path, patients: int = 60, per_patient: int = 2, channels: int = 1, spread: float = 0.0
) -> Path:
    """Two classes told apart by brightness; each patient has ``per_patient`` images of one class.

    ``spread`` jitters each image's brightness (standard deviation), so the classes overlap."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,patient,finding"]
    for patient in range(patients):
        finding = "effusion" if patient % 2 else "normal"
        for k in range(per_patient):
            level = (170 if finding == "effusion" else 70) + rng.normal(0, spread)
            pixels = np.clip(rng.normal(level, 30, size=(32, 32, channels)), 0, 255).astype(np.uint8)
            name = f"images/p{patient:03d}_{k}.png"
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(root / name)
            rows.append(f"{name},P{patient:03d},{finding}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def image_folder_writer():
    """``write_image_folder`` for fixtures of a wider scope than a test."""
    return write_image_folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "dataset")


@pytest.fixture
def make_image_folder(tmp_path):
    """``make_image_folder("rgb", channels=3)`` builds another folder under the test's tmp_path."""
    return lambda name, **options: write_image_folder(tmp_path / name, **options)
