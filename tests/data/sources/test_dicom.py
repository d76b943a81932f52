from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medfm.data.intensity import percentile_scale
from medfm.data.sources.base import check_sample, open_source
from medfm.data.sources.dicom import (
    IDENTIFYING_KEYWORDS,
    IDENTIFYING_TAGS,
    DicomSource,
    deidentify,
    subject_pseudonym,
)
from medfm.errors import ConfigError, DataError

# Identifiers in the real folder's headers (its SOURCE.md); none may reach a sample's metadata.
REAL_IDENTIFIERS = [
    "PGBM-002",
    "PGBM-003",
    "PGBM-006",
    "Albus",
    "Dumbledore",
    "Chrisjen",
    "Avasarala",
    "Thanos",
    "Inevitable",
    "3083564386975476",  # an AccessionNumber
    "1.3.6.1.4.1.14519",  # TCIA UID root
    "1.2.826.0.1.3680043",  # UID root of the crops
    "20200121",  # course-set study dates and TCIA-shifted ones
    "20200119",
    "19970117",
    "19950329",
]


def test_dicom_hippocampus_series(dataset):
    root = dataset("dicom-hippocampus-series")
    index = pd.read_csv(root / "series.csv")
    source = open_source("dicom", root, license="CC BY 3.0", anatomy="brain", record_paths=True)
    start = time.perf_counter()
    samples = list(source)
    elapsed = time.perf_counter() - start
    print(f"dicom-hippocampus-series: {len(samples)} series, 195 files in {elapsed:.2f} s")

    assert len(samples) == 7 and len(source.skips) == 0
    assert all(
        "path" not in s["meta"] for s in DicomSource(root, license="x")
    )  # folder names are not de-identified
    by_path = {s["meta"]["path"]: s for s in samples}
    assert set(by_path) == set(index.series_dir)
    assert sum(s["meta"]["n_slices"] for s in samples) == 195
    for row in index.itertuples():
        sample = by_path[row.series_dir]
        meta = sample["meta"]
        check_sample(sample)
        text = json.dumps(meta)
        for identifier in [*REAL_IDENTIFIERS, row.study_instance_uid, row.patient_id]:
            assert identifier not in text
        assert sample["image"].shape == (1, row.n_slices, row.rows, row.cols)
        assert sample["image"].dtype == np.float32
        assert sample["image"].min() >= 0.0 and sample["image"].max() == 1.0
        assert (meta["modality"], meta["series_description"]) == ("mr", row.series_description)
        assert meta["image_type"] == row.image_type.split("\\")
        pixel = float(row.pixel_spacing_mm.split("x")[0])
        assert meta["pixel_spacing"] == [pixel, pixel]
        assert meta["slice_thickness"] == row.slice_thickness_mm
        assert meta["axis_names"] == ["axial", "coronal", "sagittal"]
        assert meta["slice_order"] == "position"
        assert meta["deidentified"] is True and meta["subject_id"].startswith("subj-")
    full_brain = [s["meta"] for s in samples if s["meta"]["rows"] == 320]
    assert len(full_brain) == 4
    # 5 mm slices 6.5 mm apart (SpacingBetweenSlices), from the positions.
    assert all(m["spacing"] == pytest.approx([6.5, 0.6875, 0.6875], abs=1e-3) for m in full_brain)
    assert all(m["anatomy"] == "brain" for m in full_brain)

    # Same patient, same pseudonym: Study3's four full-brain series and its crop; three patients in all.
    subjects = {path: s["meta"]["subject_id"] for path, s in by_path.items()}
    study3 = {subjects[p] for p in subjects if p.startswith("Study3/")}
    assert len(study3) == 1 and len(set(subjects.values())) == 3
    assert len({s["meta"]["study_id"] for s in samples}) == 3
    assert len({s["meta"]["sample_id"] for s in samples}) == 7


def test_slices_stack_in_instance_order(dataset):
    root = dataset("dicom-hippocampus-series")
    folder = "Study3/11_HCropVolume"
    source = DicomSource(root, license="CC BY 3.0", record_paths=True)
    sample = next(s for s in source if s["meta"]["path"] == folder)
    files = [pydicom.dcmread(p) for p in sorted((root / folder).glob("*.dcm"))]
    files.sort(key=lambda ds: int(ds.InstanceNumber))
    expected = percentile_scale(np.stack([ds.pixel_array for ds in files]).astype(np.float32))
    np.testing.assert_allclose(sample["image"][0], expected, atol=1e-6)


def test_other_salt_other_pseudonyms_same_grouping(dataset):
    root = dataset("dicom-hippocampus-series")
    default = {
        s["meta"]["path"]: s["meta"]["subject_id"] for s in DicomSource(root, license="x", record_paths=True)
    }
    salted = {
        s["meta"]["path"]: s["meta"]["subject_id"]
        for s in DicomSource(root, license="x", subject_salt="k", record_paths=True)
    }
    assert not set(default.values()) & set(salted.values())
    assert {frozenset(p for p in default if default[p] == s) for s in default.values()} == {
        frozenset(p for p in salted if salted[p] == s) for s in salted.values()
    }


def test_every_listed_keyword_is_a_dicom_attribute():
    assert len(IDENTIFYING_TAGS) == len(IDENTIFYING_KEYWORDS) and None not in IDENTIFYING_TAGS


def test_deidentify_removes_identifiers_everywhere():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.InstitutionName = "General Hospital"
    ds.OtherPatientIDsSequence = Sequence([Dataset()])
    ds.OtherPatientIDsSequence[0].PatientID = "OTHER-1"
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.OperatorsName = "Nested^Person"
    ds.ReferencedImageSequence = Sequence([item])
    original_instance, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    assert any(element.tag.is_private for element in ds)

    pseudonym = subject_pseudonym(ds, "k")
    result = deidentify(ds, salt="k")
    assert result is ds
    text = str(ds)
    for identifier in ["CompressedSamples", "1CT1", "OTHER-1", "General Hospital", "Nested", "20040119"]:
        assert identifier not in text
    assert not any(element.tag.is_private for element in ds)
    for keyword in ["PatientName", "PatientID", "PatientBirthDate", "StudyDate", "InstitutionName"]:
        assert keyword not in ds
    assert ds.SOPClassUID == sop_class  # a standard UID identifies nothing
    assert str(ds.SOPInstanceUID).startswith("2.25.") and ds.SOPInstanceUID != original_instance
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID  # stays linked
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
    assert ds.pixel_array.shape == (128, 128)  # the image itself is untouched
    assert pseudonym.startswith("subj-") and "1CT1" not in pseudonym
    assert pseudonym == subject_pseudonym(pydicom.dcmread(get_testdata_file("CT_small.dcm")), "k")


def test_ct_small_in_hounsfield_units_and_windows(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm")
    raw = pydicom.dcmread(tmp_path / "CT_small.dcm")
    assert (raw.RescaleSlope, raw.RescaleIntercept) == (1, -1024)

    hu = next(iter(DicomSource(tmp_path, keep_hu=True)))
    # Stored values 128..2191 with intercept -1024.
    assert (hu["image"].min(), hu["image"].max()) == (-896.0, 1167.0)
    assert hu["image"].dtype == np.float32 and hu["image"].shape == (1, 1, 128, 128)
    meta = hu["meta"]
    assert (meta["modality"], meta["intensity"]) == ("ct", {"method": "hounsfield"})
    assert meta["spacing"] == pytest.approx([5.0, 0.661468, 0.661468])
    assert meta["axis_names"] == ["axial", "coronal", "sagittal"]
    assert "1CT1" not in json.dumps(meta) and "CompressedSamples" not in json.dumps(meta)

    auto = next(iter(DicomSource(tmp_path)))  # no BodyPartExamined: abdomen window (40, 400)
    assert auto["meta"]["intensity"] == {"method": "ct_window", "centre": 40.0, "width": 400.0}
    np.testing.assert_allclose(auto["image"], np.clip((hu["image"] + 160) / 400, 0, 1), atol=1e-6)
    lung = next(iter(DicomSource(tmp_path, ct_window="lung")))
    np.testing.assert_allclose(lung["image"], np.clip((hu["image"] + 1350) / 1500, 0, 1), atol=1e-6)
    custom = next(iter(DicomSource(tmp_path, ct_window=[0, 100])))
    assert custom["meta"]["intensity"] == {"method": "ct_window", "centre": 0.0, "width": 100.0}


def _write_slice(
    path: Path, *, z: float | None, instance: int, value: int, size: int = 16, sagittal: bool = False
) -> None:
    """A CT slice of constant stored ``value`` in one shared series, made from pydicom's CT_small."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if sagittal:
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = instance
    if z is None:
        del ds.ImagePositionPatient
    else:
        ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.Rows = ds.Columns = size
    ds.PixelData = np.full((size, size), value, dtype=np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


def test_series_sorted_by_position_and_bad_files_skipped(tmp_path):
    # File names and InstanceNumbers disagree with the positions: positions win.
    _write_slice(tmp_path / "s/a.dcm", z=10.0, instance=1, value=1030)
    _write_slice(tmp_path / "s/b.dcm", z=0.0, instance=2, value=1010)
    _write_slice(tmp_path / "s/IM0003", z=5.0, instance=3, value=1020)  # no extension, still DICOM
    _write_slice(tmp_path / "s/d.dcm", z=15.0, instance=4, value=1040, size=8)
    _write_slice(tmp_path / "s/e.dcm", z=20.0, instance=5, value=1050, sagittal=True)  # a localizer
    whole = (tmp_path / "s/a.dcm").read_bytes()
    pixels_start = whole.index(np.full((16, 16), 1030, dtype=np.int16).tobytes())
    (tmp_path / "s/truncated.dcm").write_bytes(whole[: pixels_start + 256])  # ends inside the pixel data
    (tmp_path / "s/x.dcm").write_text("this is not DICOM\n")
    (tmp_path / "s/README").write_text("notes, not DICOM: ignored\n")

    source = DicomSource(tmp_path, keep_hu=True, record_paths=True)
    samples = list(source)
    assert len(samples) == 1
    image, meta = samples[0]["image"], samples[0]["meta"]
    assert image.shape == (1, 3, 16, 16)
    assert [float(image[0, i, 0, 0]) for i in range(3)] == [-14.0, -4.0, 6.0]  # z = 0, 5, 10
    assert meta["spacing"][0] == pytest.approx(5.0) and meta["n_slices"] == 3
    assert meta["path"] == "s"
    assert source.skips.counts() == {"corrupt_dicom": 2, "inconsistent_slice": 2}
    reasons = {r.path: r.reason for r in source.skips.records}
    assert reasons == {
        "s/truncated.dcm": "corrupt_dicom",
        "s/x.dcm": "corrupt_dicom",
        "s/d.dcm": "inconsistent_slice",
        "s/e.dcm": "inconsistent_slice",
    }

    too_few = DicomSource(tmp_path, min_slices=4)
    assert list(too_few) == []
    assert too_few.skips.counts()["too_few_slices"] == 1


def test_instance_number_orders_slices_without_positions(tmp_path):
    _write_slice(tmp_path / "a.dcm", z=None, instance=2, value=1020)
    _write_slice(tmp_path / "b.dcm", z=None, instance=1, value=1010)
    sample = next(iter(DicomSource(tmp_path, keep_hu=True, record_paths=False)))
    assert [float(v) for v in sample["image"][0, :, 0, 0]] == [-14.0, -4.0]
    assert sample["meta"]["slice_order"] == "instance_number"
    assert sample["meta"]["spacing"][0] == 5.0  # SliceThickness
    assert "path" not in sample["meta"]


def test_bad_options_and_folders(tmp_path):
    with pytest.raises(DataError, match="no DICOM files"):
        list(DicomSource(tmp_path))
    with pytest.raises(ConfigError, match="unknown CT window"):
        DicomSource(tmp_path, ct_window="soft")
    with pytest.raises(ConfigError, match="min_slices"):
        DicomSource(tmp_path, min_slices=0)
    with pytest.raises(ConfigError, match="no option"):
        open_source("dicom", tmp_path, window="brain")


def test_without_a_salt_pseudonyms_are_random_per_process_or_the_environment_salt(tmp_path, monkeypatch):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm")
    monkeypatch.delenv("MEDFM_SUBJECT_SALT", raising=False)
    unsalted = [next(iter(DicomSource(tmp_path)))["meta"]["subject_id"] for _ in range(2)]
    assert unsalted[0] == unsalted[1]  # one salt for the whole process
    public_default = "medfm-default-subject-salt: change it per deployment"  # the salt medfm used to ship
    assert next(iter(DicomSource(tmp_path, subject_salt=public_default)))["meta"]["subject_id"] != unsalted[0]
    monkeypatch.setenv("MEDFM_SUBJECT_SALT", "site salt")
    from_environment = next(iter(DicomSource(tmp_path)))["meta"]["subject_id"]
    given = next(iter(DicomSource(tmp_path, subject_salt="site salt")))["meta"]["subject_id"]
    assert from_environment == given != unsalted[0]


def test_skips_never_name_a_path_holding_a_patient_id(tmp_path, caplog):
    _write_slice(tmp_path / "PAT123/series/1.dcm", z=0.0, instance=1, value=1010)
    _write_slice(tmp_path / "PAT123/series/2.dcm", z=5.0, instance=2, value=1020, size=8)
    (tmp_path / "PAT123/series/PAT123-notes.dcm").write_text("not DICOM\n")
    source = DicomSource(tmp_path, min_slices=2)
    assert list(source) == []
    assert source.skips.counts() == {"corrupt_dicom": 1, "inconsistent_slice": 1, "too_few_slices": 1}
    for record in source.skips.records:
        assert "PAT" not in record.path + record.detail, record
        assert record.path.startswith(("file-", "series-"))
    assert {r.path[-4:] for r in source.skips.records if r.path.startswith("file-")} == {".dcm"}
    assert "PAT" not in caplog.text and "skipped file-" in caplog.text
    named = DicomSource(tmp_path, min_slices=2, record_paths=True)  # folders known to be clean
    list(named)
    assert "PAT123/series/PAT123-notes.dcm" in {r.path for r in named.skips.records}


def test_error_details_drop_the_file_path():
    from medfm.data.sources.dicom import error_detail

    path = Path("/data/PAT123/series/1.dcm")
    missing = FileNotFoundError(2, "No such file or directory", str(path))
    assert "PAT123" in str(missing)
    assert error_detail(missing, path) == "FileNotFoundError: No such file or directory"
    assert error_detail(ValueError(f"cannot decode {path}"), path) == "ValueError: cannot decode the file"
