"""How many of a task's test subjects the encoder under evaluation saw in pretraining.

Every stage that evaluates a bundle asks :func:`check_task` before it fits anything. The bundle's record
(:mod:`medfm.data.seen`) answers by subject key for a task over a source its corpus held. A task over data
the corpus may hold under other names is matched by content against the pictures the encoder was trained
on: a user's image folder, and a source related to a corpus source by derivation (PneumoniaMNIST and the
paediatric X-rays it was cut from, either way round); that needs the corpus, found where the bundle says
it was built and recognised by its catalog's fingerprint.

By default a test subject seen in pretraining stops the run with one line naming the task, the count and
the fix; ``allow_seen`` runs anyway and adds the eval set ``unseen_subjects`` (the test examples of the
subjects never seen) so both are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medfm.data.seen import SeenSubjects, corpus_pictures, seen_by_content, seen_by_keys
from medfm.data.shards import CATALOG
from medfm.data.sources import SOURCES
from medfm.errors import DataError
from medfm.evaluate.tasks import TaskData
from medfm.log import get_logger
from medfm.models.bundle import CONFIG_FILE
from medfm.runs import fingerprint_path

log = get_logger("evaluate.seen")

UNSEEN = "unseen_subjects"  # the eval set of the test examples whose subject pretraining never saw
SEEN_COLUMN = "seen_in_pretraining"  # result column: subjects of the row's eval set pretraining saw


@dataclass
class SeenCheck:
    """The outcome for one task: which test examples' subjects were seen, and how it was decided."""

    seen: np.ndarray  # bool, per test example
    subjects: int  # distinct test subjects seen
    of: int  # distinct test subjects
    how: str  # "keys", "keys and content", or why it could not be checked
    checked: bool = True


@dataclass
class Pretraining:
    """What a bundle says about its pretraining: the record, its corpus and the rows it trained on."""

    bundle: Path
    record: SeenSubjects | None
    config: dict[str, Any]
    _pictures: dict[frozenset, Any] = field(default_factory=dict, repr=False)

    @property
    def sources(self) -> set[str]:
        return {s["source"] for s in self.config.get("data", {}).get("sources", [])}

    def corpus(self, sources: set[str]):
        """The pictures of ``sources`` the encoder was trained on, or why they cannot be read (a str)."""
        key = frozenset(sources)
        if key not in self._pictures:
            self._pictures[key] = self._read_corpus(sources)
        return self._pictures[key]

    def _read_corpus(self, sources: set[str]):
        data = self.config.get("data", {})
        path = Path(
            data.get("corpus_path")
            or self.config.get("pretrain_config", {}).get("data", {}).get("corpus", "")
        )
        if not (path / CATALOG).is_file():
            return f"its corpus is not at {path}"
        if fingerprint_path(path / CATALOG)["blake2b"] != data.get("catalog_blake2b"):
            return f"the corpus at {path} is not the one it was trained on (catalog fingerprint)"
        from medfm.pretrain.data import corpus_rows

        pre = self.config["pretrain_config"]
        rows = corpus_rows(
            path,
            split=pre["data"]["split"],
            modalities=pre["data"]["modalities"],
            sources=pre["data"]["sources"],
            fraction=pre["data"]["fraction"],
            seed=pre["train"]["seed"],
        )
        catalog = pd.read_parquet(path / CATALOG)
        if "group" not in catalog.columns:  # a corpus built before subjects were grouped by content
            catalog["group"] = catalog["subject_key"]
        rows = rows.join(catalog[["sha256", "phash", "group"]])
        return corpus_pictures(path, rows[rows["source"].isin(sources)])


def pretraining_of(source) -> Pretraining | None:
    """The pretraining record of an encoder given as a bundle (None for a registered name)."""
    if source is None or source.path is None:
        return None
    folder = source.path if source.path.is_dir() else source.path.parent  # a folder, or its weights file
    config_file = folder / CONFIG_FILE
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    return Pretraining(source.path, SeenSubjects.load(folder), config or {})


def content_sources(task_source: str, corpus_sources: set[str]) -> set[str]:
    """The corpus sources whose training pictures a task's test pictures are matched with by content:
    every one for a user's folder; for a source related by derivation to corpus sources, those relatives
    (a PneumoniaMNIST test picture is looked for among the paediatric X-rays, and the other way round);
    none where keys tell."""
    if task_source.startswith("image_folder:"):
        return set(corpus_sources)
    if task_source not in SOURCES:
        return set()
    relatives = {SOURCES.get(task_source).info.derived_from}
    relatives |= {
        n for n in corpus_sources if n in SOURCES and SOURCES.get(n).info.derived_from == task_source
    }
    return relatives & corpus_sources


def check_task(data: TaskData, test: np.ndarray, pretraining: Pretraining) -> SeenCheck:
    """Which of ``data``'s test examples (positions ``test``) have a subject the encoder saw."""
    subjects = data.subjects[test].astype(str)
    count = len(np.unique(subjects))
    if pretraining.record is None:
        reason = "not checked: the bundle keeps no record of its pretraining subjects"
        return SeenCheck(np.zeros(len(test), bool), 0, count, reason, checked=False)
    seen = seen_by_keys(pretraining.record, data.info.source, subjects)
    how = "keys"
    matched = content_sources(data.info.source, pretraining.sources)
    if matched:
        corpus = pretraining.corpus(matched)
        if isinstance(corpus, str):  # keys alone cannot tell for this task: the count is a lower bound
            how = f"keys only, not matched by content: {corpus}"
            log.warning("task %s: test subjects checked by key only: %s", data.name, corpus)
            return SeenCheck(seen, len(np.unique(subjects[seen])), count, how, checked=False)
        elif "image" in data.inputs:
            log.info("task %s: matching %d test pictures with the pretraining pictures", data.name, len(test))
            by_content, cut = seen_by_content([data.inputs["image"][i] for i in test], corpus)
            seen |= by_content
            how = (
                f"keys, and content against the training pictures of {', '.join(sorted(matched))}: pixels, "
                f"perceptual hash, thumbnails at r > {cut:.3f}"
            )
    return SeenCheck(seen, len(np.unique(subjects[seen])), count, how)


def refuse_or_flag(
    data: TaskData, test: np.ndarray, check: SeenCheck, allow_seen: bool, bundle: Path
) -> TaskData:
    """Stop when test subjects were seen (unless allowed); else ``data`` with the ``unseen_subjects``
    flag on every example (True where its subject was never seen) when some were."""
    if not check.subjects:
        return data
    if not allow_seen:
        raise DataError(
            f"task {data.name}: {check.subjects} of {check.of} test subjects were in the pretraining data of "
            f"{bundle} (checked by {check.how}); evaluate on subjects its corpus held out, or set "
            "allow_seen=true to report the whole test set and the unseen subjects apart"
        )
    seen_subjects = set(data.subjects[test][check.seen].astype(str))
    unseen = ~np.isin(data.subjects.astype(str), list(seen_subjects))
    log.warning(
        "task %s: %d of %d test subjects were seen in pretraining; eval set %s holds the others",
        data.name,
        check.subjects,
        check.of,
        UNSEEN,
    )
    return replace(data, flags={**data.flags, UNSEEN: unseen})
