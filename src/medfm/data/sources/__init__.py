"""Source adapters, one per format or dataset; importing this package registers them all in ``SOURCES``."""

from medfm.data.sources.base import (
    SOURCES,
    Skip,
    SkipLog,
    SourceAdapter,
    SourceInfo,
    check_sample,
    open_source,
    register_source,
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
]
