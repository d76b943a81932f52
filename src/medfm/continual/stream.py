"""A continual-learning stream: experiences read from registered evaluation tasks, relabelled for the
scenario, preprocessed once and held as tensors.

Each experience keeps its task's subject split (train / val / test), so a patient is in one split of one
experience; experiences cut from the same task (class-incremental) share that split. Every check that
decides whether a stream makes sense runs here, before any training:

* a shared head (domain- and class-incremental) needs one input shape and, for domain-incremental, one
  label space across experiences; the message names both experiences and what differs;
* class-incremental experiences bring classes no earlier experience had;
* a chosen or renamed class must exist in the task.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medfm.continual.config import ContinualConfig, ExperienceConfig
from medfm.errors import ConfigError, DataError
from medfm.evaluate.backbones import Backbone
from medfm.evaluate.encoders import EncoderSource, build_backbone, resolve_encoder
from medfm.evaluate.inputs import Split, model_inputs
from medfm.evaluate.seen import check_task, pretraining_of, refuse_or_flag
from medfm.evaluate.tasks import TASKS, TaskData
from medfm.evaluate.timeseries_backbones import SeriesBackbone, SignalBackbone
from medfm.log import get_logger

log = get_logger("continual.stream")

SPLITS = ("train", "val", "test")
KINDS = ("image", "signal", "series")  # inputs the shared trunk reads (through a tokenizer for non-images)


@dataclass(frozen=True)
class Head:
    """An output layer: the classes it scores and whether they are independent (multi-label)."""

    name: str
    classes: tuple[str, ...]
    multilabel: bool


@dataclass
class Experience:
    index: int
    name: str
    task: str
    kind: str  # image | signal | series
    head: str  # the head it trains and is scored with
    classes: tuple[str, ...]  # its own classes (a subset of the head's in class-incremental streams)
    splits: dict[str, Split]

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's shape per example (what a shared head's experiences must agree on)."""
        return {key: tuple(value.shape[1:]) for key, value in self.splits["train"].inputs.items()}

    def __len__(self) -> int:
        return len(self.splits["train"])


@dataclass
class Stream:
    scenario: str
    experiences: list[Experience]
    heads: dict[str, Head]
    trunk: EncoderSource

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experiences]

    @property
    def train_examples(self) -> int:
        return sum(len(e) for e in self.experiences)

    def signatures(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Each distinct non-image input (kind and per-example shape) by its tokenizer's name: an ECG of one
        lead and one of twelve, or ICU stays with 37 and with 34 variables, need tokenizers of their own."""
        found: dict[str, tuple[str, tuple[int, ...]]] = {}
        for experience in self.experiences:
            if experience.kind != "image":
                shape = experience.input_shapes[experience.kind]
                found.setdefault(tokenizer_name(experience.kind, shape), (experience.kind, shape))
        return found


def tokenizer_name(kind: str, shape: tuple[int, ...]) -> str:
    return f"{kind}_{'x'.join(map(str, shape))}"


def build_stream(config: ContinualConfig) -> Stream:
    """Read, relabel, check and preprocess every experience of ``config``."""
    config.check()
    trunk = resolve_encoder(config.encoder)
    pretraining = pretraining_of(trunk)
    if trunk.spatial_dims != 2:
        raise ConfigError(f"the shared trunk must be a 2D ViT; {trunk.label} is a volume encoder")
    for spec in config.experiences:  # every task name checked before any data is read
        try:
            TASKS.get(spec.task)
        except KeyError as err:
            raise ConfigError(f"experience {spec.label}: {err.args[0]}") from None
    loaded: dict[tuple[str, str, int], TaskData] = {}
    experiences: list[Experience] = []
    heads: dict[str, Head] = {}
    for index, spec in enumerate(config.experiences):
        key = (spec.task, spec.root, spec.limit)
        if key not in loaded:
            loaded[key] = open_task(spec).load()
        data, classes = relabel(loaded[key], spec)
        if pretraining is not None:
            test = np.flatnonzero(data.split == "test")
            check = check_task(data, test, pretraining)
            log.info(
                "experience %s: %d of %d test subjects seen in pretraining (%s)",
                spec.label,
                check.subjects,
                check.of,
                check.how,
            )
            refuse_or_flag(data, test, check, config.allow_seen, pretraining.bundle)
        kind = data.info.kind
        if kind not in KINDS:
            raise ConfigError(
                f"experience {spec.label}: {kind} inputs are not supported in a stream (the trunk reads "
                f"{', '.join(KINDS)})"
            )
        head = head_of(config.scenario, spec.label, classes, data.info.multilabel, heads)
        y = to_head(data, classes, heads[head].classes)
        backbone = preprocessing(trunk, data, spec.image_size or config.image_size, config.signal_length)
        inputs = model_inputs(backbone, data, f"preparing {spec.label}")
        splits = {
            split: tensor_split(inputs, y, data.subjects, np.flatnonzero(data.split == split))
            for split in SPLITS
        }
        experience = Experience(index, spec.label, spec.task, kind, head, classes, splits)
        check_experience(config.scenario, experience, experiences)
        experiences.append(experience)
        log.info(
            "experience %d %s: %s, %s examples (train/val/test), head %s",
            index,
            spec.label,
            kind,
            "/".join(str(len(s)) for s in splits.values()),
            head,
        )
    return Stream(config.scenario, experiences, heads, trunk)


def open_task(spec: ExperienceConfig):
    task_cls = TASKS.get(spec.task)
    if spec.task == "image_folder" and not spec.root:
        raise ConfigError(f"experience {spec.label}: an image_folder task needs root: <folder>")
    return task_cls(spec.root or None, limit=spec.limit or None)


def relabel(data: TaskData, spec: ExperienceConfig) -> tuple[TaskData, tuple[str, ...]]:
    """The task's data with renamed classes, cut to the experience's classes when it names some."""
    unknown = sorted(set(spec.rename) - set(data.classes))
    if unknown:
        raise ConfigError(
            f"experience {spec.label}: cannot rename {unknown}: task {data.name} has classes "
            f"{list(data.classes)}"
        )
    names = tuple(spec.rename.get(c, c) for c in data.classes)
    if not spec.classes:
        return replace(data, classes=names), names
    missing = sorted(set(spec.classes) - set(names))
    if missing:
        raise ConfigError(
            f"experience {spec.label}: classes {missing} are not among task {data.name}'s {list(names)}"
        )
    if data.info.multilabel:
        raise ConfigError(
            f"experience {spec.label}: task {data.name} is multi-label; it cannot be cut by class"
        )
    keep = np.isin(np.asarray(names, dtype=object)[data.y], spec.classes)
    part = data.select(keep)
    return replace(part, classes=names), tuple(c for c in names if c in spec.classes)


def head_of(
    scenario: str, name: str, classes: tuple[str, ...], multilabel: bool, heads: dict[str, Head]
) -> str:
    """The head an experience trains: its own (task-incremental) or the stream's one (grown for classes)."""
    if scenario == "task":
        heads[name] = Head(name, classes, multilabel)
        return name
    if multilabel and scenario == "class":
        raise ConfigError(f"experience {name}: multi-label tasks cannot join a class-incremental head")
    shared = heads.get("shared")
    if shared is None:
        heads["shared"] = Head("shared", classes, multilabel)
    elif scenario == "class":
        heads["shared"] = Head("shared", shared.classes + classes, multilabel)
    return "shared"


def to_head(data: TaskData, classes: tuple[str, ...], head_classes: tuple[str, ...]) -> np.ndarray:
    """Labels as positions in the head (class-incremental: in the stream's growing class list)."""
    if data.info.multilabel:
        return np.asarray(data.y, dtype=np.float32)
    position = np.array([head_classes.index(c) if c in head_classes else -1 for c in data.classes])
    y = position[data.y]
    return y.astype(np.int64)


def preprocessing(trunk: EncoderSource, data: TaskData, image_size: int, signal_length: int) -> Backbone:
    """The backbone whose ``collate`` turns the task's examples into the tensors the trunk reads."""
    kind = data.info.kind
    if kind == "image":
        return build_backbone(trunk, data, pretrained=False, image_size=image_size)
    if kind == "signal":
        return SignalBackbone(None, length=signal_length)
    backbone = SeriesBackbone(None)
    train = np.flatnonzero(data.split == "train")
    backbone.fit({key: [values[i] for i in train] for key, values in data.inputs.items()})
    return backbone


def tensor_split(
    inputs: dict[str, torch.Tensor], y: np.ndarray, subjects: np.ndarray, rows: np.ndarray
) -> Split:
    index = torch.as_tensor(rows, dtype=torch.long)
    return Split(
        {key: value[index].contiguous() for key, value in inputs.items()},
        torch.as_tensor(y[rows]),
        np.asarray(subjects[rows], dtype=object),
    )


def check_experience(scenario: str, experience: Experience, earlier: list[Experience]) -> None:
    """Refuse an experience that cannot follow the earlier ones on the same head."""
    if not earlier or scenario == "task":
        return
    first = earlier[0]
    if experience.input_shapes != first.input_shapes:
        raise ConfigError(
            f"experience {experience.name} gives inputs {describe(experience.input_shapes)} but experience "
            f"{first.name} gives {describe(first.input_shapes)}; a {scenario}-incremental stream shares one "
            "head, so every experience needs the same input shape (set one image_size, or use scenario: task)"
        )
    if scenario == "domain" and experience.classes != first.classes:
        raise ConfigError(
            f"experience {experience.name} has label space {list(experience.classes)} but experience "
            f"{first.name} has {list(first.classes)}; a domain-incremental stream shares one head (rename "
            "classes with rename: {old: new}, or use scenario: task)"
        )
    if scenario == "class":
        for other in earlier:
            shared = sorted(set(experience.classes) & set(other.classes))
            if shared:
                raise ConfigError(
                    f"experiences {other.name} and {experience.name} both hold class(es) {shared}; a "
                    "class-incremental experience brings classes no earlier one had"
                )


def describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{key} {list(shape)}" for key, shape in shapes.items())


# ---- the prepared stream on disk: tensors in safetensors (no pickle), the rest in JSON ----------------


def save_stream(stream: Stream, folder: Path) -> None:
    """``stream.safetensors`` (``<experience>/<split>/<input>`` and ``.../y``) and ``stream.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    subjects: dict[str, list[str]] = {}
    for experience in stream.experiences:
        for split, data in experience.splits.items():
            prefix = f"{experience.index}/{split}"
            tensors.update({f"{prefix}/{key}": value for key, value in data.inputs.items()})
            tensors[f"{prefix}/y"] = data.y
            subjects[prefix] = [str(s) for s in data.subjects]
    save_file(tensors, str(folder / "stream.safetensors"))
    info = {
        "scenario": stream.scenario,
        "trunk": {**asdict(stream.trunk), "path": str(stream.trunk.path) if stream.trunk.path else None},
        "heads": {name: asdict(head) for name, head in stream.heads.items()},
        "experiences": [
            {
                "index": e.index,
                "name": e.name,
                "task": e.task,
                "kind": e.kind,
                "head": e.head,
                "classes": e.classes,
            }
            for e in stream.experiences
        ],
        "subjects": subjects,
    }
    (folder / "stream.json").write_text(json.dumps(info, indent=1))


def load_stream(folder: Path) -> Stream:
    path = folder / "stream.json"
    if not path.is_file():
        raise DataError(f"{folder} holds no prepared stream (stream.json is missing)")
    info = json.loads(path.read_text())
    tensors = load_file(str(folder / "stream.safetensors"))
    experiences = []
    for item in info["experiences"]:
        splits = {}
        for split in SPLITS:
            prefix = f"{item['index']}/{split}/"
            inputs = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            y = inputs.pop("y")
            splits[split] = Split(inputs, y, np.array(info["subjects"][prefix.rstrip("/")], dtype=object))
        experiences.append(Experience(**{**item, "classes": tuple(item["classes"])}, splits=splits))
    trunk = dict(info["trunk"])
    trunk["path"] = Path(trunk["path"]) if trunk["path"] else None
    trunk["img_size"] = tuple(trunk["img_size"]) if isinstance(trunk["img_size"], list) else trunk["img_size"]
    heads = {
        name: Head(head["name"], tuple(head["classes"]), head["multilabel"])
        for name, head in info["heads"].items()
    }
    return Stream(info["scenario"], experiences, heads, EncoderSource(**trunk))
