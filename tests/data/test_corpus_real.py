"""The corpus build over every image source of the real data folder."""

from __future__ import annotations

import pandas as pd
import pytest

from medfm.config import load_config
from medfm.data.corpus import CorpusConfig, build_corpus
from medfm.data.shards import StreamingCorpus


@pytest.mark.slow
def test_all_image_sources_build_without_subject_leaks(data_root, tmp_path, request):
    config_path = request.config.rootpath / "configs" / "data" / "all-image-sources.yaml"
    config = load_config(CorpusConfig, config_path, [f"output={tmp_path / 'corpus'}", "image_size=64"])
    summary = build_corpus(config)

    assert summary["sources"] == 7 and summary["modalities"] >= 4
    assert summary["subjects_in_several_splits"] == 0
    assert summary["skipped_files"] == 0
    assert summary["exact_duplicates"] >= 32  # the pneumonia set alone has 32 redundant byte-identical files
    catalog = pd.read_parquet(tmp_path / "corpus" / "catalog.parquet")
    assert (catalog.groupby("subject_key")["split"].nunique() == 1).all()
    assert len(catalog) == summary["images"] == sum(summary["images_per_split"].values())
    # one patient's pneumonia images (a personNNN id from both official splits) stay together
    person = catalog[catalog["subject_key"] == "pediatric_pneumonia_xray/person1"]
    assert len(person) >= 2 and person["split"].nunique() == 1
    first = next(iter(StreamingCorpus(tmp_path / "corpus", "train", channels=3)))
    assert tuple(first["image"].shape) == (3, 64, 64)
