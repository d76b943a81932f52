"""ICU time-series tasks: in-hospital mortality (PhysioNet 2012) and early warning of sepsis (PhysioNet 2019).

Inputs are hourly grids, ``{"series": float32 [T, F] (NaN where not measured), "mask": bool [T, F],
"static": float32 [S] (NaN where missing)}``. ``static`` holds what is known about the patient beside the
series (demographics, and for sepsis the time since ICU admission); the classical baseline uses it, the
recurrent encoder sees only the series.

Subgroups: ``sex`` (``F``, ``M``, ``unknown``) and ``age_band`` (``<18``, ``18-39``, ``40-59``,
``60-79``, ``80+``, ``unknown``). Some PhysioNet 2012 stays (55 of set A) record Age 200: unknown.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from medfm.data.sources import open_source
from medfm.data.sources import physionet2012 as challenge2012
from medfm.data.sources import physionet2019 as challenge2019
from medfm.evaluate.tasks.base import Example, Task, TaskInfo, register_task

# Age bands of the subgroup report as (exclusive upper bound, name); an age past the last bound is unknown.
AGE_BANDS = ((18, "<18"), (40, "18-39"), (60, "40-59"), (80, "60-79"), (120, "80+"))
SEXES = {0: "F", 1: "M"}  # both challenges code Gender 0 female, 1 male

# Sepsis prediction times: every STRIDE_H hours from WINDOW_H on, looking at the last WINDOW_H hours.
WINDOW_H = 24
STRIDE_H = 6
HORIZON_H = 6
# The challenge sets SepsisLabel from 6 hours before the clinical onset (its early-warning label).
SEPSIS_LABEL_LEAD_H = 6


def age_band(age: float | None) -> str:
    if age is None or not 0 <= age < AGE_BANDS[-1][0]:
        return "unknown"
    return next(name for bound, name in AGE_BANDS if age < bound)


def demographics(static: Mapping[str, Any]) -> dict[str, str]:
    """The subgroup columns of a record's static descriptors (``Gender`` and ``Age``)."""
    return {"sex": SEXES.get(static.get("Gender"), "unknown"), "age_band": age_band(static.get("Age"))}


def static_vector(static: Mapping[str, Any], names: tuple[str, ...], *extra: float) -> np.ndarray:
    """``static[name]`` for each name (NaN where missing), then ``extra``, as float32."""
    values = [np.nan if static.get(name) is None else static[name] for name in names]
    return np.array([*values, *extra], dtype=np.float32)


@register_task("physionet2012_mortality")
class PhysioNet2012Mortality(Task):
    """In-hospital death from the first 48 hours of an ICU stay, one example per stay.

    Inputs: ``series`` / ``mask`` ``[48, 37]`` (hourly means of the challenge's variables) and ``static``
    ``[5]`` = Age, Gender, Height, ICUType, initial Weight (NaN where a record omits one). The set gives
    one record per stay and no patient identifier, so a stay is a subject. A stay without an outcome is
    skipped (logged).
    """

    info = TaskInfo(
        kind="series",
        modality="icu_timeseries",
        description=(
            "In-hospital mortality from the first 48 h of an ICU stay (PhysioNet 2012 set A), hourly grid; "
            "split by stay."
        ),
        source="physionet2012",
        folder="icu-physionet2012",
        classes=("survived", "died"),
        groups=("sex", "age_band"),
        classical="icu_summary_gbm",
        encoder="icu_gru",
        citation=challenge2012.PhysioNet2012.info.citation,
    )

    def examples(self) -> Iterator[Example]:
        source = open_source(self.info.source, self.root)
        for sample in source:
            meta = sample["meta"]
            death = meta["labels"]["in_hospital_death"]
            if death is None:
                source.skips.add(meta["path"], "missing_label", "no in-hospital outcome")
                continue
            yield Example(
                inputs={
                    "series": sample["series"],
                    "mask": sample["mask"],
                    "static": static_vector(meta["static"], challenge2012.STATIC),
                },
                label=self.info.classes[death],
                subject=meta["subject_id"],
                sample_id=meta["sample_id"],
                groups=demographics(meta["static"]),
            )


def prediction_times(n_hours: int, onset_hour: int | None) -> list[tuple[int, bool]]:
    """``(t, sepsis within HORIZON_H hours)`` for each prediction time of one stay.

    Hours count from the record's first row (row ``r`` covers hour ``r`` to ``r + 1``), so at time ``t``
    rows ``t - WINDOW_H .. t - 1`` are known. ``onset_hour`` is the adapter's first row with SepsisLabel 1;
    the clinical onset is ``SEPSIS_LABEL_LEAD_H`` hours later. Times are ``WINDOW_H, WINDOW_H +
    STRIDE_H, ...`` while the stay goes on (``t < n_hours``) and before the onset (``t < onset``); the
    label says whether the onset falls in ``(t, t + HORIZON_H]``.
    """
    onset = None if onset_hour is None else onset_hour + SEPSIS_LABEL_LEAD_H
    times = []
    for t in range(WINDOW_H, n_hours, STRIDE_H):
        if onset is not None and t >= onset:
            break
        times.append((t, onset is not None and onset <= t + HORIZON_H))
    return times


@register_task("physionet2019_sepsis")
class PhysioNet2019Sepsis(Task):
    """Sepsis onset within the next 6 hours, predicted every 6 hours of a stay from the last 24 hours.

    One example per prediction time (see :func:`prediction_times`), so a patient gives several; the
    subject is the patient, so splits and the bootstrap keep a patient's examples together. Inputs:
    ``series`` / ``mask`` ``[24, 34]`` (rows ``t - 24 .. t - 1`` of the record) and ``static`` ``[6]`` =
    Age, Gender, Unit1, Unit2, HospAdmTime and ICULOS at time ``t`` (hours since ICU admission). Sample
    ids are ``<patient>_h<t>``.
    """

    info = TaskInfo(
        kind="series",
        modality="icu_timeseries",
        description=(
            "Sepsis onset within 6 hours (PhysioNet 2019 set B, partial), predicted every 6 h from hour 24 "
            "on from the previous 24 hourly rows; several examples per patient, split by patient."
        ),
        source="physionet2019",
        folder="icu-sepsis-physionet2019",
        classes=("no_sepsis_6h", "sepsis_6h"),
        groups=("sex", "age_band"),
        classical="icu_summary_gbm",
        encoder="icu_gru",
        citation=challenge2019.PhysioNet2019.info.citation,
    )

    def examples(self) -> Iterator[Example]:
        for sample in open_source(self.info.source, self.root):
            meta = sample["meta"]
            static, patient = meta["static"], meta["subject_id"]
            groups = demographics(static)
            for t, septic in prediction_times(len(sample["series"]), meta["labels"]["onset_hour"]):
                window = slice(t - WINDOW_H, t)
                iculos = np.nan if meta["iculos_start"] is None else meta["iculos_start"] + t - 1
                yield Example(
                    inputs={
                        "series": sample["series"][window].copy(),
                        "mask": sample["mask"][window].copy(),
                        "static": static_vector(static, challenge2019.STATIC, iculos),
                    },
                    label=self.info.classes[int(septic)],
                    subject=patient,
                    sample_id=f"{patient}_h{t}",
                    groups=groups,
                )
