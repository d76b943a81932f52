"""Shared fixtures. Real data comes from MEDFM_DATA_ROOT; without it, data tests skip and say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
