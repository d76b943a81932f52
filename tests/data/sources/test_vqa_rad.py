from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.vqa_rad import VqaRadSource, modality_from_answers
from medfm.errors import ConfigError, DataError


def test_question_counts(dataset):
    source = VqaRadSource(dataset("vqa-rad"), max_size=128)
    splits: Counter[str] = Counter()
    images = set()
    for sample in source:
        splits[sample["meta"]["official_split"]] += 1
        images.add(sample["meta"]["subject_id"])
    assert splits == {"train": 3064, "test": 451}
    assert len(images) == 314
    assert len(source.skips) == 0


def test_question_samples(dataset):
    samples = list(islice(VqaRadSource(dataset("vqa-rad")), 30))
    for sample in samples:
        check_sample(sample)
        json.dumps(sample["meta"])
        assert sample["image"].dtype == np.uint8 and sample["image"].ndim == 3
        assert isinstance(sample["question"], str) and isinstance(sample["answer"], str)
    first = samples[0]
    assert first["question"] == "Are regions of the brain infarcted?"
    assert first["answer"] == "Yes"
    meta = first["meta"]
    assert meta["qid"] == 1 and meta["sample_id"] == "train-1"
    assert (meta["subject_id"], meta["path"]) == ("synpic54610", "images/synpic54610.jpg")
    assert (meta["anatomy"], meta["image_organ"], meta["labels"]) == ("head", "HEAD", {"organ": "head"})
    assert (meta["answer_type"], meta["question_type"], meta["license"]) == ("CLOSED", "PRES", "CC0 1.0")
    # Questions are grouped by image, so each image is decoded once.
    names = [s["meta"]["subject_id"] for s in samples]
    assert names == sorted(names, key=names.index)


def test_image_unit(dataset):
    source = open_source("vqa_rad", dataset("vqa-rad"), unit="image", max_size=128)
    metas = {s["meta"]["sample_id"]: s["meta"] for s in source}
    assert len(metas) == 315
    for meta in metas.values():
        json.dumps(meta)
    # Images whose MODALITY answers name a modality; the rest stay "radiology".
    modalities = Counter((m["modality"], m["anatomy"]) for m in metas.values())
    assert modalities["mr", "head"] == 37
    assert modalities["xray", "chest"] == 27
    assert (modalities["ct", "abdomen"], modalities["ct", "head"]) == (18, 3)
    assert sum(count for (modality, _), count in modalities.items() if modality == "radiology") == 230
    # Its only MODALITY question is negated: "What type of imaging does this not represent? ultrasound".
    assert metas["synpic28602"]["modality"] == "radiology"
    assert metas["synpic28602"]["splits"] == ["train"]
    assert metas["synpic54610"]["splits"] == ["test", "train"]
    assert metas["synpic35356"]["splits"] == [] and metas["synpic35356"]["anatomy"] == "unknown"


def qa(
    qid: int, image: str, question: str, answer, question_type: str = "PRES", organ: str = "CHEST"
) -> dict:
    return {
        "qid": qid,
        "image_name": image,
        "image_organ": organ,
        "answer": answer,
        "answer_type": "OPEN",
        "question_type": question_type,
        "question": question,
        "phrase_type": "freeform",
    }


def make_vqa(root: Path, train: list[dict], test: list[dict]) -> None:
    (root / "images").mkdir()
    Image.fromarray(np.full((20, 30), 90, dtype=np.uint8)).save(root / "images" / "a.jpg")
    (root / "trainset.json").write_text(json.dumps(train))
    (root / "testset.json").write_text(json.dumps(test))


def test_missing_image_is_skipped(tmp_path):
    make_vqa(
        tmp_path,
        [qa(1, "a.jpg", "Is this a chest x-ray?", "yes", "MODALITY"), qa(2, "gone.jpg", "Any mass?", "no")],
        [qa(3, "a.jpg", "How many ribs?", 12, "COUNT"), {"qid": 4, "question": "no image"}],
    )
    source = VqaRadSource(tmp_path)
    samples = list(source)
    assert [s["meta"]["qid"] for s in samples] == [1, 3]
    assert samples[1]["answer"] == "12"
    assert samples[1]["meta"]["official_split"] == "test"
    assert {s["meta"]["modality"] for s in samples} == {"xray"}
    assert samples[0]["image"].shape == (1, 20, 30)
    assert source.skips.counts() == {"missing_file": 1, "bad_record": 1}
    assert {r.path for r in source.skips.records} == {"images/gone.jpg", "testset.json[1]"}


def test_modality_from_answers():
    def modality(*pairs):
        return modality_from_answers([qa(i, "a.jpg", q, a, "MODALITY") for i, (q, a) in enumerate(pairs)])

    assert modality(("What imaging modality was used?", "MR - FLAIR")) == "mr"
    assert modality(("Is this a noncontrast CT?", "yes")) == "ct"
    assert modality(("Is this an MRI?", "no")) is None
    assert modality(("What type of imaging does this not represent?", "x-ray")) is None
    assert (
        modality(("Is this a CT or an MRI?", "mri"), ("Was this taken with CT?", "yes"), ("How?", "MRI"))
        == "mr"
    )
    assert modality(("How was it taken?", "ct"), ("How was it taken?", "xray")) is None
    pres = [qa(1, "a.jpg", "Is there a mass on this CT?", "yes")]
    assert modality_from_answers(pres) is None


def test_missing_or_broken_json_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"trainset\.json"):
        VqaRadSource(tmp_path)
    make_vqa(tmp_path, [qa(1, "a.jpg", "q", "a")], [])
    with pytest.raises(DataError, match=r"testset\.json should hold a non-empty list"):
        VqaRadSource(tmp_path)
    (tmp_path / "testset.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        VqaRadSource(tmp_path)


def test_unknown_unit_is_a_config_error(tmp_path):
    make_vqa(tmp_path, [qa(1, "a.jpg", "q", "a")], [qa(2, "a.jpg", "q", "a")])
    with pytest.raises(ConfigError, match="unit"):
        VqaRadSource(tmp_path, unit="question")


@pytest.mark.parametrize("image_name", ["../trainset.json", "../../outside.jpg", "/etc/passwd", "link.jpg"])
def test_image_name_outside_the_images_folder_is_a_data_error(tmp_path, image_name):
    root = tmp_path / "vqa"
    root.mkdir()
    make_vqa(root, [qa(1, "a.jpg", "q", "a")], [qa(2, "a.jpg", "q", "a"), qa(3, image_name, "q", "a")])
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "outside.jpg")
    (root / "images" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    problem = "leaves the folder|is absolute"
    with pytest.raises(DataError, match=rf"^testset\.json\[1\] image_name: path .* ({problem})"):
        VqaRadSource(root)
