from __future__ import annotations

import json
import re
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.image_folder import ImageFolderSource, PediatricPneumoniaXraySource
from medfm.errors import ConfigError, DataError


def write_jpeg(path: Path, seed: int = 0, size: int = 32) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path.read_bytes()


def test_pneumonia_first_samples(dataset):
    source = PediatricPneumoniaXraySource(dataset("xray-pediatric-pneumonia-224"))
    samples = list(islice(source, 40))
    for sample in samples:
        check_sample(sample)
        json.dumps(sample["meta"])
        assert sample["image"].shape == (1, 224, 224)
        assert sample["image"].dtype == np.uint8
    first = samples[0]["meta"]
    assert first["path"].startswith("train/NORMAL/IM-")
    assert first["labels"] == {"diagnosis": "NORMAL"}
    assert first["official_split"] == "train"
    assert (first["modality"], first["anatomy"], first["license"]) == ("xray", "chest", "CC BY 4.0")


@pytest.mark.slow
def test_pneumonia_full_pass_matches_source_md(dataset):
    source = open_source("pediatric_pneumonia_xray", dataset("xray-pediatric-pneumonia-224"))
    counts: Counter[tuple] = Counter()
    subjects: dict[str, set[str]] = {}
    for sample in source:
        meta = sample["meta"]
        assert sample["image"].shape == (1, 224, 224)
        labels = meta["labels"]
        counts[meta["official_split"], labels["diagnosis"], labels.get("subtype")] += 1
        subjects.setdefault(meta["subject_id"], set()).add(meta["path"])
    assert len(source.skips) == 0
    assert sum(counts.values()) == 5840
    assert counts["train", "NORMAL", None] == 1341
    assert counts["train", "PNEUMONIA", "bacteria"] == 2530
    assert counts["train", "PNEUMONIA", "virus"] == 1345
    assert counts["test", "NORMAL", None] == 234
    assert counts["test", "PNEUMONIA", "bacteria"] + counts["test", "PNEUMONIA", "virus"] == 390
    assert len(subjects) < 5840
    # Several files of one NORMAL patient share a subject.
    assert subjects["IM-0429"] == {
        "train/NORMAL/IM-0429-0001.jpeg",
        "train/NORMAL/IM-0429-0001-0001.jpeg",
        "train/NORMAL/IM-0429-0001-0002.jpeg",
    }
    assert len(subjects["NORMAL2-IM-1152"]) == 3
    assert subjects["person1372"] >= {
        f"train/PNEUMONIA/person1372_bacteria_{n}.jpeg" for n in (3501, 3502, 3503)
    }


def test_new_modality_folder_with_subject_column(tmp_path):
    for index in range(4):
        write_jpeg(tmp_path / "scans" / f"s{index}.jpg", seed=index)
    (tmp_path / "labels.csv").write_text(
        "path,patient,split,grade,score\n"
        "scans/s0.jpg,007,train,1,0.5\nscans/s1.jpg,007,train,2,\n"
        "scans/s2.jpg,012,test,1,1.5\nscans/s3.jpg,013,,0,2\n",
    )
    source = ImageFolderSource(
        tmp_path, subject_column="patient", modality="thermography", anatomy="skin", license="CC0"
    )
    samples = list(source)
    assert len(samples) == 4
    for sample in samples:
        check_sample(sample)
        json.dumps(sample["meta"], allow_nan=False)
        assert sample["image"].shape == (3, 32, 32)
    metas = [s["meta"] for s in samples]
    assert [m["subject_id"] for m in metas] == ["007", "007", "012", "013"]
    assert metas[1]["labels"] == {"grade": 2, "score": None}
    assert [m["official_split"] for m in metas] == ["train", "train", "test", None]
    assert (metas[0]["modality"], metas[0]["anatomy"], metas[0]["license"]) == ("thermography", "skin", "CC0")


def test_subject_pattern_and_label_columns(tmp_path):
    for name in ("p1_a.jpg", "p1_b.jpg", "p2_a.jpg"):
        write_jpeg(tmp_path / name)
    (tmp_path / "index.csv").write_text(
        "file,label,notes\np1_a.jpg,x,n\np1_b.jpg,y,n\np2_a.jpg,x,n\nzz.jpg,x,n\n"
    )
    source = ImageFolderSource(
        tmp_path,
        labels_file="index.csv",
        path_column="file",
        label_columns=["label"],
        subject_pattern=r"^(p\d+)_",
    )
    metas = [sample["meta"] for sample in source]
    assert [m["subject_id"] for m in metas] == ["p1", "p1", "p2"]
    assert metas[0]["labels"] == {"label": "x"}
    assert "official_split" not in metas[0]
    assert source.skips.counts() == {"missing_subject": 1}


def test_each_image_is_its_own_subject_by_default(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    write_jpeg(tmp_path / "b.jpg")
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,0\nb.jpg,1\n")
    assert [s["meta"]["subject_id"] for s in ImageFolderSource(tmp_path)] == ["a.jpg", "b.jpg"]


def test_truncated_jpeg_is_skipped(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    whole = write_jpeg(tmp_path / "good.jpg", size=64)
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "labels.csv").write_text("path,label\ngood.jpg,1\ncut.jpg,0\ntext.jpg,0\n")
    source = ImageFolderSource(tmp_path)
    assert [s["meta"]["path"] for s in source] == ["good.jpg"]
    assert source.skips.counts() == {"unreadable_image": 2}
    assert {r.path for r in source.skips.records} == {"cut.jpg", "text.jpg"}
    assert "truncated" in source.skips.records[0].detail


def test_missing_image_is_skipped(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,1\nnowhere.jpg,0\n,0\n")
    source = ImageFolderSource(tmp_path)
    assert len(list(source)) == 1
    assert source.skips.counts() == {"missing_file": 2}
    assert source.skips.records[0].path == "nowhere.jpg"


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "empty"), ("path,label\n", "no rows"), ("file,label\na.jpg,1\n", "lacks column")],
)
def test_bad_labels_csv_is_a_data_error(tmp_path, content, problem):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DataError, match=problem) as raised:
        ImageFolderSource(tmp_path)
    assert "labels.csv" in str(raised.value)


def test_missing_labels_csv_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"labels\.csv"):
        ImageFolderSource(tmp_path)


def test_missing_label_column_is_a_data_error(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,1\n")
    with pytest.raises(DataError, match="grade"):
        ImageFolderSource(tmp_path, label_columns=["grade"])


def test_subject_pattern_needs_a_group(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,1\n")
    with pytest.raises(ConfigError, match="group"):
        ImageFolderSource(tmp_path, subject_pattern=r"p\d+")


@pytest.mark.parametrize(
    ("path", "problem"), [("../outside.jpg", "leaves the folder"), ("/etc/passwd", "is absolute")]
)
def test_labels_csv_path_outside_the_folder_is_a_data_error(tmp_path, path, problem):
    folder = tmp_path / "images"
    write_jpeg(folder / "a.jpg")
    write_jpeg(tmp_path / "outside.jpg")
    (folder / "labels.csv").write_text(f"path,label\na.jpg,1\n{path},0\n")
    with pytest.raises(DataError, match=re.escape(f"labels.csv row 3: path '{path}' {problem}")):
        ImageFolderSource(folder)


def test_labels_csv_symlink_leaving_the_folder_is_a_data_error(tmp_path):
    folder = tmp_path / "images"
    write_jpeg(tmp_path / "outside.jpg")
    folder.mkdir()
    (folder / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (folder / "labels.csv").write_text("path,label\nlink.jpg,1\n")
    with pytest.raises(DataError, match=r"labels\.csv row 2: path 'link\.jpg' leaves the folder"):
        ImageFolderSource(folder)


def test_image_folder_task_refuses_paths_outside_the_folder(tmp_path):
    from medfm.evaluate.tasks.images import ImageFolderTask

    write_jpeg(tmp_path / "outside.jpg")
    folder = tmp_path / "images"
    write_jpeg(folder / "a.jpg")
    (folder / "labels.csv").write_text("file,label\na.jpg,1\n../outside.jpg,0\n")
    with pytest.raises(DataError, match=r"labels\.csv row 3: path '\.\./outside\.jpg' leaves the folder"):
        list(ImageFolderTask(folder, path_column="file").examples())
