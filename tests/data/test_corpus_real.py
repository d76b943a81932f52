"""The corpus build over every image source of the real data folder (and a user's folder)."""

from __future__ import annotations

import pandas as pd
import pytest

from medfm.config import load_config
from medfm.data.card import write_card
from medfm.data.corpus import CorpusConfig, SourceSpec, build_corpus
from medfm.data.shards import StreamingCorpus
from medfm.evaluate.tasks import TASKS
from medfm.evaluate.tasks.images import ImageFolderTask

IMAGE_TASKS = [
    "pneumonia_xray",
    "pneumonia_xray_official",
    "pneumoniamnist",
    "hippocampus_volume",
    "idrid_lesions",
    "vqa_rad_closed",
]


@pytest.fixture(scope="module")
def built(data_root, tmp_path_factory, request, image_folder_writer):
    """Every image source of the data folder plus a user's folder of scans, built once at 32 px."""
    root = tmp_path_factory.mktemp("all-sources")
    folder = image_folder_writer(root / "scans")
    config_path = request.config.rootpath / "configs" / "data" / "all-image-sources.yaml"
    config = load_config(CorpusConfig, config_path, [f"output={root / 'corpus'}", "image_size=32"])
    config.sources.append(SourceSpec("image_folder", str(folder), {"subject_column": "patient"}))
    return root / "corpus", folder, build_corpus(config)


@pytest.mark.slow
def test_all_image_sources_build_without_subject_leaks(built):
    corpus, _, summary = built
    assert summary["sources"] == 8 and summary["modalities"] >= 4
    assert summary["subjects_in_several_splits"] == 0
    assert summary["skipped_files"] == 0
    assert summary["exact_duplicates"] >= 32  # the pneumonia set alone has 32 redundant byte-identical files
    catalog = pd.read_parquet(corpus / "catalog.parquet")
    assert (catalog.groupby("subject_key")["split"].nunique() == 1).all()
    assert (catalog.groupby("group")["split"].nunique() == 1).all()
    assert len(catalog) == summary["images"] == sum(summary["images_per_split"].values())
    # one patient's pneumonia images (a personNNN id from both official splits) stay together
    person = catalog[catalog["subject_key"] == "pediatric_pneumonia_xray/person1"]
    assert len(person) >= 2 and person["split"].nunique() == 1
    first = next(iter(StreamingCorpus(corpus, "train", channels=3)))
    assert tuple(first["image"].shape) == (3, 32, 32)


@pytest.mark.slow
def test_no_test_subject_of_any_task_is_in_corpus_train_or_val(built):
    """Every registered image task, and the user's folder: the corpus holds out each test subject, directly
    or through the content group that links a derived picture to its original."""
    corpus, folder, _ = built
    catalog = pd.read_parquet(corpus / "catalog.parquet")
    dropped = pd.read_parquet(corpus / "duplicates.parquet")
    group_of = catalog.drop_duplicates("subject_key").set_index("subject_key")["group"]
    group_of = pd.concat([group_of, dropped.set_index("subject_key")["copy_of"].map(group_of).dropna()])
    group_of = group_of[~group_of.index.duplicated()]
    split_of = catalog.groupby("group")["split"].agg(set)
    tasks = [(name, TASKS.get(name)()) for name in IMAGE_TASKS]
    tasks.append(("image_folder", ImageFolderTask(folder, label_column="finding", id_column="patient")))
    for name, task in tasks:
        data = task.load()
        keys = {f"{data.info.source}/{s}" for s in data.subjects[data.split == "test"]}
        groups = {group_of[k] for k in keys if k in group_of.index}
        assert len(groups) >= 0.5 * len(keys), name  # the corpus holds most test subjects: not vacuous
        leaked = sorted(g for g in groups if split_of[g] != {"test"})
        assert not leaked, f"{name}: {len(leaked)} test subjects in corpus train or val, e.g. {leaked[:3]}"


@pytest.mark.slow
def test_the_card_lists_the_derived_links_and_their_calibration(built):
    corpus, _, summary = built
    links = summary["links"]["pairs"]["pneumoniamnist -> pediatric_pneumonia_xray"]
    assert links["linked"] > 4500 and links["false_links_between_known_patients"] == 0
    assert links["labels_agree"] == f"{links['linked']}/{links['linked']}"
    card = write_card(corpus).read_text()
    assert "## Subjects joined by content" in card and f"All {links['linked']:,} links" in card
    assert len(pd.read_parquet(corpus / "links.parquet")) == links["linked"]
