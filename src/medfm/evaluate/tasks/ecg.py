"""ECG tasks: rhythm classification of the PhysioNet/CinC Challenge 2017 single-lead records.

Each record is one example at its own rate (300 Hz, 9-60 s, not resampled or cut: the backbone and the
classical baseline decide how to use the length). The challenge publishes no patient identifiers, so
each record is its own subject in the split.
"""

from __future__ import annotations

from collections.abc import Iterator

from medfm.data.sources import open_source
from medfm.data.sources.cinc2017 import CinC2017ECG
from medfm.errors import DataError
from medfm.evaluate.tasks.base import Example, Task, TaskInfo, register_task

# The rate every record of the challenge has; the classical R-peak detector is tuned to it.
SAMPLING_RATE_HZ = 300.0


@register_task("cinc2017_rhythm")
class CinC2017Rhythm(Task):
    """Four rhythm classes, under the challenge's own codes.

    Inputs: ``{"signal": float32 [1, T]}`` in mV at 300 Hz. A record at another rate is refused
    (:class:`DataError`), because the baselines' time constants assume 300 Hz.
    """

    info = TaskInfo(
        kind="signal",
        modality="ecg",
        description=(
            "Single-lead ECG rhythm (CinC 2017, 300 Hz, 9-60 s): N normal sinus rhythm, A atrial "
            "fibrillation, O other rhythm, ~ too noisy to classify; split by record."
        ),
        source="cinc2017_ecg",
        folder="ecg-cinc2017-af",
        classes=("N", "A", "O", "~"),
        classical="rr_gbm",
        encoder="ecg_cnn",
        citation=CinC2017ECG.info.citation,
    )

    def examples(self) -> Iterator[Example]:
        for sample in open_source(self.info.source, self.root):
            meta = sample["meta"]
            if meta["sampling_rate"] != SAMPLING_RATE_HZ:
                raise DataError(
                    f"task {self.name}: record {meta['path']} is sampled at {meta['sampling_rate']} Hz; "
                    f"the task expects {SAMPLING_RATE_HZ:g} Hz"
                )
            yield Example(
                inputs={"signal": sample["signal"]},
                label=meta["labels"]["rhythm"],
                subject=meta["subject_id"],
                sample_id=meta["sample_id"],
            )
