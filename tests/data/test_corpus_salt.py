"""The secret salt of a corpus's DICOM pseudonyms: drawn per corpus, kept beside it, reused on a rebuild,
and found in no other file a build, its data card, a pretraining run or a bundle writes."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medfm.config import load_config
from medfm.data.card import write_card
from medfm.data.corpus import CorpusConfig, SourceSpec, build_corpus
from medfm.data.salt import SALT_ENV, SALT_FILE
from medfm.data.sources.dicom import DicomSource
from medfm.errors import ConfigError
from medfm.pretrain.config import PretrainConfig
from medfm.pretrain.export import export_bundle
from medfm.pretrain.job import run_pretrain

PATIENTS = [f"PAT{number}" for number in range(100, 112)]  # low-entropy ids, as hospitals use


@pytest.fixture
def dicom_folder(tmp_path: Path) -> Path:
    """Twelve patients, one three-slice CT series each, under folders named by PatientID (as TCIA
    downloads are), plus one file that is not DICOM."""
    root = tmp_path / "dicom"
    rng = np.random.default_rng(0)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for patient in PATIENTS:
        study, series = generate_uid(), generate_uid()
        for index in range(3):
            ds = template.copy()
            ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber, ds.ImagePositionPatient = index + 1, [0.0, 0.0, 5.0 * index]
            ds.Rows = ds.Columns = 16
            ds.PixelData = rng.integers(900, 1300, (16, 16), dtype=np.int16).tobytes()
            path = root / patient / "series" / f"{index}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path)
    (root / PATIENTS[0] / "series" / "broken.dcm").write_text("not DICOM\n")
    return root


@pytest.fixture(autouse=True)
def no_salt_given(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)


def _config(root: Path, out: Path, **options) -> CorpusConfig:
    spec = SourceSpec(adapter="dicom", root=str(root), options={"license": "MIT", **options})
    return CorpusConfig(output=str(out), sources=[spec], image_size=32, workers=1, min_slice_foreground=0.0)


def _subjects(corpus: Path) -> pd.DataFrame:
    columns = ["sample_id", "slice_index", "subject_id", "split"]
    return pd.read_parquet(corpus / "catalog.parquet", columns=columns).sort_values(columns[:2])


def test_corpora_draw_their_own_salt_and_a_rebuild_keeps_it(dicom_folder, tmp_path):
    build_corpus(_config(dicom_folder, tmp_path / "a"))
    build_corpus(_config(dicom_folder, tmp_path / "b"))
    first, other = _subjects(tmp_path / "a"), _subjects(tmp_path / "b")
    assert first["subject_id"].nunique() == other["subject_id"].nunique() == len(PATIENTS)
    assert not set(first["subject_id"]) & set(other["subject_id"])  # no shared (public) key

    secret = tmp_path / "a" / SALT_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    salt = secret.read_text().strip()
    assert len(salt) == 64 and salt != (tmp_path / "b" / SALT_FILE).read_text().strip()

    build_corpus(_config(dicom_folder, tmp_path / "a"))  # a rebuild: same pseudonyms, same splits
    pd.testing.assert_frame_equal(_subjects(tmp_path / "a"), first)
    assert secret.read_text().strip() == salt


def test_a_given_salt_is_kept_and_a_different_one_refused(dicom_folder, tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, "site salt")
    build_corpus(_config(dicom_folder, tmp_path / "a"))
    assert (tmp_path / "a" / SALT_FILE).read_text().strip() == "site salt"
    standalone = {s["meta"]["subject_id"] for s in DicomSource(dicom_folder, subject_salt="site salt")}
    assert set(_subjects(tmp_path / "a")["subject_id"]) == standalone
    monkeypatch.setenv(SALT_ENV, "another salt")
    with pytest.raises(ConfigError, match=f"{SALT_ENV} differs from the salt"):
        build_corpus(_config(dicom_folder, tmp_path / "a"))
    monkeypatch.delenv(SALT_ENV)
    with pytest.raises(ConfigError, match="subject_salt does not belong in a corpus config"):
        build_corpus(_config(dicom_folder, tmp_path / "c", subject_salt="in the config"))


def test_the_salt_is_in_no_file_but_its_own_and_no_log(dicom_folder, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    with caplog.at_level(logging.INFO, logger="medfm"):
        summary = build_corpus(_config(dicom_folder, corpus))
    assert summary["skipped_by_reason"] == {"corrupt_dicom": 1}
    assert "PAT" not in caplog.text and "skipped file-" in caplog.text  # the skipped file, not its path
    write_card(corpus)
    run = tmp_path / "run"
    overrides = [f"output={run}", f"data.corpus={corpus}", "encoder=test_vit", "image_size=32"]
    overrides += ["train.steps=2", "train.batch_size=4", "train.workers=0"]
    run_pretrain(load_config(PretrainConfig, None, overrides))
    bundle = export_bundle(run, tmp_path / "bundle")

    salt = (corpus / SALT_FILE).read_text().strip()
    holding = [
        path.relative_to(tmp_path).as_posix()
        for folder in (corpus, run, bundle)
        for path in folder.rglob("*")
        if path.is_file() and salt.encode() in path.read_bytes()
    ]
    assert holding == [f"corpus/{SALT_FILE.as_posix()}"]
    assert salt not in caplog.text
