"""Federated tasks: FEDMEKI's binary tasks over medfm's evaluation tasks, each with its lightweight encoder.

A federated task reads a registered evaluation task (:mod:`medfm.evaluate.tasks`: its data, subject split
and checks), maps its classes to one binary outcome (``positive`` classes -> 1) and names the encoder
FEDMEKI pairs with the modality. Two of FEDMEKI's tasks have no public data here (COVID-19, enlarged
cardiomediastinum): they read a user's folder in the generic image-folder layout (``images/`` +
``labels.csv``) and run as soon as ``root`` points at one.

``site`` names where a natural partition finds each example's site: a function of the task's data
(PhysioNet 2012's ICU type, from the static descriptors) or a subgroup column of the task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medfm.data.sources import physionet2012, physionet2019
from medfm.errors import ConfigError
from medfm.evaluate.tasks import TASKS, Task, TaskData  # the package registers every evaluation task
from medfm.registry import Registry

# PhysioNet 2012's ICUType codes (static descriptor); the natural sites of the mortality task.
ICU_TYPES = {1: "Coronary Care Unit", 2: "Cardiac Surgery Recovery Unit", 3: "Medical ICU", 4: "Surgical ICU"}


def icu_type(data: TaskData) -> np.ndarray:
    """Each stay's ICU type; an error when no record says (some copies of set A strip the descriptor)."""
    column = physionet2012.STATIC.index("ICUType")
    codes = [s[column] for s in data.inputs["static"]]
    sites = np.array([ICU_TYPES.get(int(c), "unknown") if np.isfinite(c) else "unknown" for c in codes])
    if (sites == "unknown").all():
        raise ConfigError(
            f"none of the {len(sites)} PhysioNet 2012 records carries the ICUType descriptor, so there are "
            "no ICU-type sites; name a metadata column (partition.site: age_band) or use another partition"
        )
    return sites


def sepsis_unit(data: TaskData) -> np.ndarray:
    """PhysioNet 2019's unit flags (Unit1 = medical ICU, Unit2 = surgical ICU); many records have neither."""
    medical, surgical = (physionet2019.STATIC.index(name) for name in ("Unit1", "Unit2"))
    units = []
    for s in data.inputs["static"]:
        units.append("MICU" if s[medical] == 1 else "SICU" if s[surgical] == 1 else "unknown")
    return np.array(units)


@dataclass(frozen=True)
class FedTask:
    """A binary federated task. ``classes`` names outcome 0 and 1; ``positive`` lists the evaluation
    task's classes that count as 1; ``folder_task`` marks tasks read from a user's image folder."""

    name: str
    task: str  # registered evaluation task
    description: str
    encoder: str  # FEDMEKI's lightweight encoder of the modality (registered name)
    classes: tuple[str, str]
    positive: tuple[str, ...]
    site: Callable[[TaskData], np.ndarray] | None = None
    folder_task: bool = False

    def open(self, root: str = "", limit: int = 0) -> Task:
        """The evaluation task reading this task's data (``root`` overrides its default folder)."""
        task_cls = TASKS.get(self.task)
        if self.folder_task and not root:
            raise ConfigError(
                f"federated task {self.name} has no public data: set its root to a folder of images with a "
                "labels.csv of columns path, label and patient_id (a patient's images stay on one client "
                "and in one split)"
            )
        if self.folder_task:
            return task_cls(root, id_column="patient_id", limit=limit or None)
        return task_cls(root or None, limit=limit or None)

    def binary_labels(self, data: TaskData) -> np.ndarray:
        """``1`` where the example's class is in ``positive``; an unknown positive class is an error."""
        unknown = sorted(set(self.positive) - set(data.classes))
        if unknown:
            raise ConfigError(
                f"federated task {self.name}: positive class(es) {unknown} are not among the data's "
                f"classes {list(data.classes)}"
            )
        positive = np.array([c in self.positive for c in data.classes])
        return positive[data.y].astype(np.int64)

    def sites(self, data: TaskData, column: str = "") -> np.ndarray:
        """Each example's site: ``column`` (a subgroup column of the task) or the task's own rule."""
        if column:
            if column not in data.groups:
                raise ConfigError(
                    f"federated task {self.name}: no metadata column {column!r} for a natural partition; "
                    f"columns: {sorted(data.groups) or 'none'}"
                )
            return np.asarray(data.groups[column]).astype(str)
        if self.site is None:
            raise ConfigError(
                f"federated task {self.name} has no natural sites; name a metadata column with "
                f"partition.site (columns: {sorted(data.groups) or 'none'}) or use another partition"
            )
        return self.site(data)


FED_TASKS: Registry[FedTask] = Registry("federated task")


def register(task: FedTask) -> FedTask:
    return FED_TASKS.register(task.name, task)


register(
    FedTask(
        "pneumonia_xray",
        task="pneumonia_xray",
        description="Paediatric chest X-ray pneumonia (FEDMEKI's lung-opacity analogue), split by patient",
        encoder="vit_tiny_patch16",
        classes=("normal", "pneumonia"),
        positive=("PNEUMONIA",),
    )
)
register(
    FedTask(
        "ecg_abnormal",
        task="cinc2017_rhythm",
        description="CinC 2017 single-lead ECG: normal sinus rhythm vs anything else (AF, other, noisy)",
        encoder="ecg_cnn",
        classes=("normal", "abnormal"),
        positive=("A", "O", "~"),
    )
)
register(
    FedTask(
        "ecg_noise",
        task="cinc2017_rhythm",
        description="CinC 2017 single-lead ECG: too noisy to classify ('~') vs a readable record",
        encoder="ecg_cnn",
        classes=("readable", "noisy"),
        positive=("~",),
    )
)
register(
    FedTask(
        "icu_mortality",
        task="physionet2012_mortality",
        description="In-hospital mortality from the first 48 h of an ICU stay (PhysioNet 2012)",
        encoder="icu_transformer",
        classes=("survived", "died"),
        positive=("died",),
        site=icu_type,
    )
)
register(
    FedTask(
        "sepsis",
        task="physionet2019_sepsis",
        description="Sepsis onset within 6 h (PhysioNet 2019); sites = ICU unit (MICU, SICU, unknown)",
        encoder="icu_transformer",
        classes=("no_sepsis", "sepsis"),
        positive=("sepsis_6h",),
        site=sepsis_unit,
    )
)
register(
    FedTask(
        "vqa_rad_closed",
        task="vqa_rad_closed",
        description="VQA-RAD closed questions answered yes/no (image + question), official split",
        encoder="vit_tiny_patch16",
        classes=("no", "yes"),
        positive=("yes",),
    )
)
register(
    FedTask(
        "covid19",
        task="image_folder",
        description="COVID-19 from chest X-ray (FEDMEKI); a user's image folder with labels covid / normal",
        encoder="vit_tiny_patch16",
        classes=("normal", "covid"),
        positive=("covid",),
        folder_task=True,
    )
)
register(
    FedTask(
        "enlarged_cardiomediastinum",
        task="image_folder",
        description="Enlarged cardiomediastinum from chest X-ray (FEDMEKI); a user's image folder with "
        "labels enlarged / normal",
        encoder="vit_tiny_patch16",
        classes=("normal", "enlarged"),
        positive=("enlarged",),
        folder_task=True,
    )
)
