"""``medfm quickstart``: build a small corpus from real medical files and write its data card.

With ``MEDFM_DATA_ROOT`` set, a few hundred images come from each image source under it. Without it,
the job still runs offline on real scans that medfm's own dependencies ship: pydicom's CT and MR test
files and nibabel's anatomical MR volume, copied into the output folder first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel
from pydicom.data import get_testdata_file

from medfm.data.card import write_card
from medfm.data.corpus import CorpusConfig, SourceSpec, build_corpus
from medfm.log import get_logger

log = get_logger("quickstart")

# (adapter, folder under MEDFM_DATA_ROOT, options, samples to read)
SHARED_SOURCES = [
    ("pediatric_pneumonia_xray", "xray-pediatric-pneumonia-224", {}, 300),
    ("pneumoniamnist", "pneumoniamnist", {}, 300),
    ("idrid_fundus", "fundus-idrid-subset", {"max_size": 512}, 24),
    ("npy_slices", "msd-2d-slices", {}, None),
    ("msd_hippocampus", "mri3d-msd-hippocampus", {}, 20),
    ("dicom", "dicom-hippocampus-series", {}, None),
    ("vqa_rad", "vqa-rad", {"unit": "image"}, 100),
]
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm")
NIBABEL_FILES = ("anatomical.nii",)


def quickstart_config(out: Path) -> CorpusConfig:
    common = {"output": str(out / "corpus"), "image_size": 64}
    data_root = os.environ.get("MEDFM_DATA_ROOT")
    if data_root:
        log.info("using the datasets under MEDFM_DATA_ROOT=%s", data_root)
        sources = [
            SourceSpec(adapter=a, root=str(Path(data_root) / folder), options=o, max_samples=n)
            for a, folder, o, n in SHARED_SOURCES
            if (Path(data_root) / folder).is_dir()
        ]
        return CorpusConfig(sources=sources, **common)  # axial slices only: a quick look, not a corpus
    log.info(
        "MEDFM_DATA_ROOT is not set: using the real CT and MR sample files that pydicom and nibabel ship "
        "(set MEDFM_DATA_ROOT to a folder of datasets to use those instead)"
    )
    dicom, nifti = _copy_shipped_samples(out / "sample-data")
    sources = [
        SourceSpec(adapter="dicom", root=str(dicom), options={"license": "MIT (pydicom test files)"}),
        SourceSpec(
            adapter="nifti",
            root=str(nifti),
            options={
                "images_dir": ".",
                "labels_dir": None,
                "anatomy": "brain",
                "license": "MIT (nibabel test data)",
            },
        ),
    ]
    # one small volume: every plane of it, to show slicing along several axes
    return CorpusConfig(sources=sources, slice_axes=["axial", "coronal", "sagittal"], **common)


def _copy_shipped_samples(folder: Path) -> tuple[Path, Path]:
    dicom, nifti = folder / "dicom", folder / "nifti"
    for target in (dicom, nifti):
        target.mkdir(parents=True, exist_ok=True)
    for name in PYDICOM_FILES:
        shutil.copy(get_testdata_file(name), dicom / name)
    nibabel_data = Path(nibabel.__file__).parent / "tests" / "data"
    for name in NIBABEL_FILES:
        shutil.copy(nibabel_data / name, nifti / name)
    return dicom, nifti


def run_quickstart(out: str | Path) -> Path:
    """Build the quickstart corpus under ``out`` and return the path of its data card."""
    out = Path(out).resolve()  # source roots inside it must not depend on the working directory
    summary = build_corpus(quickstart_config(out))
    log.info(
        "corpus: %d images from %d sources, %d modalities, %d duplicates removed, %d subjects in two splits",
        summary["images"],
        summary["sources"],
        summary["modalities"],
        summary["duplicates_removed"],
        summary["subjects_in_several_splits"],
    )
    return write_card(out / "corpus")
