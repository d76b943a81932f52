"""Source adapters, one per format or dataset; importing this package registers them all in ``SOURCES``."""

from medfm.data.sources import (  # noqa: F401  (imported to register the adapters)
    cinc2017,
    dicom,
    fundus,
    image_folder,
    iu_xray,
    medmnist,
    mimic3,
    nifti,
    npy_slices,
    physionet2012,
    physionet2019,
    vqa_rad,
    wfdb_record,
)
from medfm.data.sources.base import (
    SOURCES,
    Skip,
    SkipLog,
    SourceAdapter,
    SourceInfo,
    check_sample,
    open_source,
    register_source,
    source_options,
)

__all__ = [
    "SOURCES",
    "Skip",
    "SkipLog",
    "SourceAdapter",
    "SourceInfo",
    "check_sample",
    "open_source",
    "register_source",
    "source_options",
]
