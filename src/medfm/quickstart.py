"""``medfm quickstart``: build a small corpus from real medical files, write its data card, pretrain on it.

With ``MEDFM_DATA_ROOT`` set, a few hundred images come from each image source under it. Without it,
the job still runs offline on real scans that medfm's own dependencies ship: pydicom's CT and MR test
files and nibabel's anatomical MR volume, copied into the output folder first. A ViT-Tiny/8 is then
pretrained with MAE on the corpus's training split for a few minutes and exported as a bundle.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel
import pandas as pd
from pydicom.data import get_testdata_file

from medfm.data.card import write_card
from medfm.data.corpus import CorpusConfig, SourceSpec, build_corpus
from medfm.engine.trainer import TrainConfig
from medfm.errors import DataError
from medfm.evaluate.suite import EvalConfig, run_eval
from medfm.log import get_logger
from medfm.pretrain.config import PretrainConfig, PretrainDataConfig
from medfm.pretrain.job import run_pretrain

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


def quickstart_pretrain_config(out: Path, train_images: int, steps: int) -> PretrainConfig:
    """MAE on a ViT-Tiny/8 at 64 px: small enough for a laptop CPU, large enough to learn something."""
    batch = min(32, train_images)
    if batch < 2:
        raise DataError(f"the quickstart corpus has {train_images} training picture(s); pretraining needs 2")
    return PretrainConfig(
        output=str(out / "pretrain"),
        encoder="vit_tiny_patch8",
        image_size=64,
        data=PretrainDataConfig(corpus=str(out / "corpus")),
        train=TrainConfig(
            steps=steps,
            batch_size=batch,
            lr=1e-3,
            warmup_steps=max(1, steps // 10),
            log_every=max(1, min(10, steps // 10)),
            checkpoint_every=0,
            keep_checkpoints=1,
        ),
        resume=False,
    )


def quickstart_eval_config(out: Path) -> EvalConfig:
    """The pretrained encoder against its random twin and a pixel baseline on PneumoniaMNIST test images
    (a random 2,000 of the task's examples, so it takes about a minute on a CPU)."""
    return EvalConfig(
        output=str(out / "eval"),
        encoder=str(out / "pretrain" / "bundle"),
        tasks=["pneumoniamnist"],
        protocols=["linear_probe", "knn"],
        baselines=["random_init", "classical"],
        limit=2000,
    )


def run_quickstart(out: str | Path, pretrain_steps: int = 300) -> Path:
    """Build the quickstart corpus under ``out``, write its data card, pretrain and (with
    ``MEDFM_DATA_ROOT``) evaluate the encoder; return the data card's path."""
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
    card = write_card(out / "corpus")
    if pretrain_steps > 0:
        train_images = summary["images_per_split"].get("train", 0)
        last = run_pretrain(quickstart_pretrain_config(out, train_images, pretrain_steps))
        log.info(
            "pretrained for %d steps: final MAE loss %.4f; bundle in %s",
            pretrain_steps,
            last["loss"],
            out / "pretrain" / "bundle",
        )
        if os.environ.get("MEDFM_DATA_ROOT"):
            paths = run_eval(quickstart_eval_config(out))
            for row in pd.read_csv(out / "eval" / "comparisons.csv").itertuples():
                log.info(
                    "PneumoniaMNIST AUROC: %s %.3f vs %s %.3f (difference %+.3f [%+.3f, %+.3f])",
                    row.model_a,
                    row.value_a,
                    row.model_b,
                    row.value_b,
                    row.diff,
                    row.ci_low,
                    row.ci_high,
                )
            log.info(
                "evaluation: %s (report %s). A few hundred MAE steps are a smoke run, not a foundation "
                "model: results/bench/ shows a longer-trained encoder against the same baselines",
                paths["results.md"],
                paths["report.html"],
            )
        else:
            log.info("no labelled data without MEDFM_DATA_ROOT: the encoder is not evaluated")
    return card
