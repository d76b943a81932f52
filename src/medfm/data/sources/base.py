"""The contract every source adapter follows, the source registry, and the record of skipped files.

An adapter reads one dataset or format from a local folder and yields *sample dicts* keyed by
modality (see ``docs/ARCHITECTURE.md``)::

    {"image": uint8 or float32-in-[0,1] array, channel first: [C, H, W] (2D) or [C, D, H, W] (3D),
     "signal": float32 [leads, T], "series": float32 [T, F] with NaN where missing, "mask": bool [T, F],
     "text": str, "question": str, "answer": str, "boxes": float32 [N, 5] (class, cx, cy, w, h),
     "meta": {"source", "sample_id", "subject_id", "modality", "anatomy", "license", "labels", ...}}

A file that cannot be used is never dropped silently: the adapter calls :meth:`SkipLog.add`, which logs a
warning naming the file and the reason and counts it, and goes on. A source that cannot be read at all
(missing folder, empty or malformed index file) raises :class:`medfm.errors.DataError`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medfm.data.splits import SplitRule
from medfm.errors import ConfigError, DataError
from medfm.log import get_logger
from medfm.registry import Registry

log = get_logger("data.sources")

REQUIRED_META = ("source", "sample_id", "subject_id", "modality", "anatomy", "license")


@dataclass(frozen=True)
class SourceInfo:
    """What a source is; shown in the data card's license and citation table.

    ``split`` is how its subjects are split, in a corpus and in the tasks over it (see
    :mod:`medfm.data.splits`); ``derived_from`` names the source whose images this one resamples (its
    images are linked to their originals' subjects by content, :mod:`medfm.data.links`)."""

    kind: str  # image | volume | signal | series | table | text | vqa
    modality: str  # default modality of its samples (lower case: xray, ct, mr, fundus, ecg, ...)
    anatomy: str
    license: str
    citation: str = ""
    description: str = ""
    split: SplitRule = field(default_factory=SplitRule)
    derived_from: str | None = None


@dataclass(frozen=True)
class Skip:
    source: str
    path: str
    reason: str
    detail: str = ""


@dataclass
class SkipLog:
    """Files skipped by one source, each with a short reason key (e.g. ``unreadable_image``)."""

    source: str
    records: list[Skip] = field(default_factory=list)

    def add(self, path: str | Path, reason: str, detail: str = "") -> None:
        skip = Skip(self.source, str(path), reason, detail)
        self.records.append(skip)
        log.warning("skipped %s (%s%s) [%s]", path, reason, f": {detail}" if detail else "", self.source)

    def counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.records)

    def __len__(self) -> int:
        return len(self.records)


class SourceAdapter(ABC):
    """Base class of the adapters. Subclasses set ``info`` and implement ``__iter__``.

    Options specific to an adapter are keyword arguments of its ``__init__`` (after ``root``), so a YAML
    ``options:`` mapping maps onto them and an unknown option is an error, not ignored.
    """

    name: ClassVar[str] = ""
    info: ClassVar[SourceInfo]

    def __init__(self, root: str | Path, *, source: str | None = None, license: str | None = None):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DataError(f"{self.name}: source folder does not exist: {self.root}")
        self.source = source or self.name
        self.license = license or self.info.license
        self.skips = SkipLog(self.source)

    @abstractmethod
    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield sample dicts; report unusable files through ``self.skips``."""

    def meta(
        self,
        *,
        sample_id: str,
        subject_id: str,
        modality: str | None = None,
        anatomy: str | None = None,
        labels: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The metadata dict every sample carries, filled with this source's defaults."""
        return {
            "source": self.source,
            "sample_id": str(sample_id),
            "subject_id": str(subject_id),
            "modality": (modality or self.info.modality).lower(),
            "anatomy": (anatomy or self.info.anatomy).lower(),
            "license": self.license,
            "labels": labels or {},
            **extra,
        }


SOURCES: Registry[type[SourceAdapter]] = Registry("source")


def register_source(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register an adapter under ``name`` and record the name on the class."""

    def add(cls: type[SourceAdapter]) -> type[SourceAdapter]:
        cls.name = name
        return SOURCES.register(name, cls, aliases=aliases)

    return add


def source_options(name: str) -> set[str]:
    """The options (keyword arguments after ``root``) adapter ``name`` accepts; :class:`ConfigError` for an
    unknown adapter."""
    try:
        cls = SOURCES.get(name)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    return set(inspect.signature(cls.__init__).parameters) - {"self", "root"}


def open_source(name: str, root: str | Path, **options: Any) -> SourceAdapter:
    """Instantiate a registered adapter, turning a bad option into a clear :class:`ConfigError`."""
    accepted = source_options(name)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"source {name!r} has no option(s) {unknown}; it accepts {sorted(accepted)}")
    return SOURCES.get(name)(root, **options)


def check_sample(sample: dict[str, Any]) -> None:
    """Raise ``ValueError`` if a sample lacks the metadata every consumer relies on (used by tests)."""
    meta = sample.get("meta")
    if not isinstance(meta, dict):
        raise ValueError("sample has no 'meta' dict")
    missing = [key for key in REQUIRED_META if not meta.get(key)]
    if missing:
        raise ValueError(f"sample {meta.get('sample_id')!r} lacks meta {missing}")
