"""``medfm eval`` and ``medfm bench``: tasks x models x protocols, scored with intervals, one report.

For every task the encoder under evaluation runs beside its baselines on the same test examples:
the same architecture randomly initialised (frozen protocols), a supervised model trained from scratch
(ResNet-18 for 2D images; the task's registered encoder for signals and ICU series), and the task's
customary classical model. Paired bootstraps compare the encoder with each baseline.

Output folder: ``config.yaml``, ``metrics.jsonl`` (one line per model and protocol, with its time),
``provenance.json``, ``predictions/`` (``.npz``), ``results.csv``, ``results.md``, ``comparisons.csv``,
``report.html`` and ``figures/``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfm.engine.distributed import pick_device
from medfm.errors import ConfigError
from medfm.evaluate.backbones import INTENSITIES, Backbone, ImageBackbone, resnet18
from medfm.evaluate.bootstrap import holm_adjusted, paired_bootstrap
from medfm.evaluate.classical import CLASSICAL, fit_predict
from medfm.evaluate.encoders import EncoderSource, build_backbone, resolve_encoder
from medfm.evaluate.features import extract_features
from medfm.evaluate.folds import AUTO, Fold, cross_validation, folds_for, task_split
from medfm.evaluate.predictions import RESULT_COLUMNS, Predictions
from medfm.evaluate.protocols.fewshot import FewShotConfig, few_shot
from medfm.evaluate.protocols.finetune import FinetuneConfig, finetune
from medfm.evaluate.protocols.knn import KnnConfig, knn_predict
from medfm.evaluate.protocols.linear_probe import LinearProbeConfig, predict_probe, select_probe
from medfm.evaluate.report import COMPARISON_COLUMNS, write_report
from medfm.evaluate.scoring import score, score_draws
from medfm.evaluate.seen import SEEN_COLUMN, SeenCheck, check_task, pretraining_of, refuse_or_flag
from medfm.evaluate.subsample import TrainSubsample, limit_examples, train_rows
from medfm.evaluate.tasks import TASKS, TaskData, TaskInfo
from medfm.evaluate.tasks.base import PROTOCOLS
from medfm.executors import make_executor
from medfm.log import get_logger
from medfm.measure import count_parameters, flops_per_example
from medfm.runs import Run
from medfm.seeding import seeded

log = get_logger("evaluate")

FROZEN = ("linear_probe", "knn", "fewshot")
BASELINES = ("random_init", "scratch", "classical")
DEFAULT_TASKS = [
    "pneumonia_xray",
    "pneumonia_xray_official",
    "pneumoniamnist",
    "hippocampus_volume",
    "idrid_lesions",
    "cinc2017_rhythm",
    "physionet2012_mortality",
    "physionet2019_sepsis",
    "vqa_rad_closed",
]


# Fine-tuning a 2D encoder through 8 slices per volume costs 8 images per example, and the official
# pneumonia split repeats the subject-split task's images: the default suite runs their frozen protocols.
CPU_TASK_PROTOCOLS = {
    "hippocampus_volume": ["linear_probe", "knn", "fewshot"],
    "pneumonia_xray_official": ["linear_probe", "knn", "fewshot"],
}


@dataclass
class EvalConfig:
    output: str = "runs/eval"
    encoder: str = ""  # a bundle folder, or a registered encoder name (random weights)
    # the encoder's name in results (default: its bundle folder's); a grid over bundles that are one
    # recipe with different seeds gives them one name, so the axis shows as an effect on one model
    encoder_label: str = ""
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. image_folder: {root: ...}
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    # per-task limits on `protocols` (the default keeps the CPU budget; see ARCHITECTURE); {} lifts them
    task_protocols: dict[str, list[str]] = field(default_factory=lambda: dict(CPU_TASK_PROTOCOLS))
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    image_size: int = 0  # 0: the size the encoder was pretrained at
    batch_size: int = 128  # feature extraction
    limit: int = 0  # a fixed random subset of about this many examples per task (0: all); for smoke runs
    # k-fold cross-validation grouped by subject (see evaluate/folds.py): -1 for image folders of fewer
    # than cv_below examples, 0 never, k >= 2 for every task with a subject split
    cv_folds: int = AUTO
    cv_below: int = 2000
    # a bundle whose pretraining saw a task's test subject stops the run; true reports the whole test set
    # and the eval set unseen_subjects apart (see evaluate/seen.py)
    allow_seen: bool = False
    train_subsample: TrainSubsample = field(default_factory=TrainSubsample)  # learn from fewer subjects
    intensity: str = "encoder"  # image normalisation: the encoder's statistics, or per_image
    n_boot: int = 1000
    seed: int = 0
    random_init_seed: int = -1  # the random twin's weights (-1: ``seed``)
    score_val: bool = False  # also score validation predictions (linear probe, kNN): PCS prediction checks
    report: bool = True  # the HTML / Markdown report and figures (else only the tables)
    device: str = "auto"
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    # Image models fine-tune for at most 30 steps of 32, without validation checks, so the default suite
    # fits a CPU; `finetune.max_steps=0 finetune.evaluations=2` trains `epochs` and selects on validation.
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(max_steps=30, evaluations=0))
    scratch: FinetuneConfig = field(  # image models trained from scratch (ResNet-18)
        default_factory=lambda: FinetuneConfig(lr=1e-3, layer_decay=1.0, max_steps=30, evaluations=0)
    )
    timeseries: FinetuneConfig = field(  # the ECG and ICU encoders trained from scratch (small, fast)
        default_factory=lambda: FinetuneConfig(lr=1e-3, layer_decay=1.0, max_steps=200)
    )
    workers: int = 2  # processes that compute bootstrap intervals (0: this process)

    def check(self) -> EvalConfig:
        self.train_subsample.check()
        if self.intensity not in INTENSITIES:
            raise ConfigError(f"intensity must be one of {INTENSITIES}, got {self.intensity!r}")
        if self.cv_folds not in (AUTO, 0) and self.cv_folds < 2:
            raise ConfigError(
                f"cv_folds must be -1 (small folders), 0 (never) or at least 2, got {self.cv_folds}"
            )
        for name, values, known in (
            (
                "protocols",
                [p for ps in (self.protocols, *self.task_protocols.values()) for p in ps],
                PROTOCOLS,
            ),
            ("baselines", self.baselines, BASELINES),
        ):
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ConfigError(f"unknown {name} {unknown}; known: {list(known)}")
        for task in self.tasks:
            try:
                TASKS.get(task)
            except KeyError as err:
                raise ConfigError(str(err.args[0])) from None
        if not self.tasks:
            raise ConfigError("no tasks to evaluate")
        return self


@dataclass
class Model:
    """One model of a task's comparison: how to build its backbone and which protocols it runs."""

    label: str
    make: Callable[[], Backbone]
    protocols: tuple[str, ...]
    finetune: FinetuneConfig | None = None  # its fine-tuning settings, when it fine-tunes


def plan_models(
    data: TaskData, source: EncoderSource | None, config: EvalConfig
) -> tuple[list[Model], list[str]]:
    """The encoder and the neural baselines that apply to this task, with their protocols; and why each
    requested baseline that cannot run here is skipped."""
    limit = config.task_protocols.get(data.name, PROTOCOLS)
    wanted = [p for p in config.protocols if p in limit and p in data.info.protocols]
    for protocol in sorted(set(config.protocols) - set(wanted)):
        why = (
            "does not apply to the task"
            if protocol not in data.info.protocols
            else "is left out by task_protocols"
        )
        log.warning("task %s: protocol %s %s", data.name, protocol, why)
    frozen = tuple(p for p in wanted if p in FROZEN)
    skipped: dict[str, str] = {}  # baseline -> why it cannot run here (requested or not)
    if not frozen:
        skipped["random_init"] = "it is scored by frozen protocols (linear_probe, knn, fewshot) and none runs"
    if "finetune" not in wanted:
        skipped["scratch"] = "it trains with the finetune protocol, which does not run"
    if not data.info.classical:
        skipped["classical"] = "the task has no classical baseline"

    def runs(baseline: str) -> bool:
        return baseline in config.baselines and baseline not in skipped

    models = []
    if data.info.kind in ("signal", "series"):
        # no image encoder reads these: their registered encoder, random (frozen) and trained from scratch
        from medfm.evaluate.timeseries_backbones import timeseries_backbone

        name = data.info.encoder

        def make() -> Backbone:
            with seeded(config.seed):
                return timeseries_backbone(name, data)

        if runs("random_init"):
            models.append(Model(f"{name} (random init)", make, frozen))
        if runs("scratch"):
            models.append(Model(f"{name} (scratch)", make, ("finetune",), config.timeseries))
        return _requested(models, skipped, data, config)
    if source is None:
        raise ConfigError(f"task {data.name} needs an image encoder: pass a bundle or an encoder name")
    size = config.image_size
    random_seed = config.seed if config.random_init_seed < 0 else config.random_init_seed

    def encoder(pretrained: bool) -> Callable[[], Backbone]:
        def make() -> Backbone:
            # the same random weights for every task (features are cached)
            with seeded(config.seed if pretrained else random_seed):
                return build_backbone(
                    source, data, pretrained=pretrained, image_size=size, intensity=config.intensity
                )

        return make

    models.append(Model(source.label, encoder(source.path is not None), tuple(wanted), config.finetune))
    if source.path is None:
        skipped.setdefault("random_init", f"the encoder {source.label} is itself randomly initialised")
    if runs("random_init"):
        models.append(Model(source.random_label, encoder(False), frozen))
    if data.info.kind != "image":
        skipped.setdefault("scratch", f"no model is trained from scratch on {data.info.kind} inputs")
    if runs("scratch"):
        side = size or (source.img_size if isinstance(source.img_size, int) else 224)

        def make() -> Backbone:
            with seeded(config.seed):
                return ImageBackbone(
                    resnet18(source.in_chans), side, source.mean, source.std, config.intensity
                )

        models.append(Model("resnet18 (scratch)", make, ("finetune",), config.scratch))
    return _requested(models, skipped, data, config)


def _requested(
    models: list[Model], skipped: dict[str, str], data: TaskData, config: EvalConfig
) -> tuple[list[Model], list[str]]:
    """The models, and a line for each requested baseline left out (logged as it is decided)."""
    reasons = []
    for baseline in config.baselines:
        if baseline in skipped:
            reasons.append(f"baseline {baseline} skipped: {skipped[baseline]}")
            log.warning("task %s: %s", data.name, reasons[-1])
    return models, reasons


def predictions_for(test: TaskData, model: str, protocol: str, prob: np.ndarray, setting: str = ""):
    return Predictions(
        task=test.name,
        model=model,
        protocol=protocol,
        classes=test.classes,
        multilabel=test.info.multilabel,
        y=test.y,
        prob=np.asarray(prob, dtype=np.float64),
        subjects=test.subjects,
        sample_ids=test.sample_ids,
        setting=setting,
        groups=test.groups,
        flags=test.flags,
    )


@dataclass
class FoldRun:
    """One run's output on one fold."""

    prob: np.ndarray
    seconds: float
    details: dict[str, Any]


class OutOfFold:
    """Each run's probabilities gathered over the folds of a task and pooled in fold order: with one fold
    (the task's own split) exactly that fold's predictions; with cross-validation every test example once
    (a validation example can recur: each fold draws its validation part from its own training subjects)."""

    def __init__(self, data: TaskData, folds: list[Fold]):
        self.data = data
        self.folds = folds
        # (split, model, protocol, setting, draw) -> one entry per fold, in fold order
        self.runs: dict[tuple[str, str, str, str, int | None], list[FoldRun]] = defaultdict(list)

    def add(
        self,
        split: str,
        model: str,
        protocol: str,
        prob: np.ndarray,
        seconds: float = 0.0,
        *,
        setting: str = "",
        draw: int | None = None,
        **details: Any,
    ) -> None:
        self.runs[(split, model, protocol, setting, draw)].append(FoldRun(prob, seconds, details))

    def pooled(self) -> Iterator[tuple[str, Predictions, float, dict[str, Any]]]:
        """(split, pooled predictions, seconds over all folds, details) of every run, in order of arrival.

        Details are each fold's values: a number for one fold, a list with one per fold otherwise."""
        for (split, model, protocol, setting, draw), runs in self.runs.items():
            if len(runs) != len(self.folds):
                raise RuntimeError(f"{model} {protocol}: {len(runs)} of {len(self.folds)} folds predicted")
            part = self.data.select(np.concatenate([getattr(fold, split) for fold in self.folds]))
            pred = predictions_for(part, model, protocol, np.concatenate([r.prob for r in runs]), setting)
            if split == "val":  # scored on the whole split only (no eval sets or subgroups)
                pred = replace(pred, groups={}, flags={})
            details = {k: [r.details[k] for r in runs] for k in runs[0].details}
            if len(runs) == 1:
                details = runs[0].details
            else:
                details["folds"] = len(runs)
            if draw is not None:
                details["draw"] = draw
            yield split, pred, sum(r.seconds for r in runs), details


def frozen_features(
    backbone: Backbone, parts: dict[str, TaskData], rows: np.ndarray, config, device, label, cache
) -> dict[str, np.ndarray]:
    """Features of every example of each part, the training part then cut to ``rows`` (its subsample).

    Every part is encoded whole and in the same batches whatever the subsample, so a feature does not
    depend on which other examples a run happens to use: reruns reproduce it bit for bit.
    """
    features = {
        name: extract_features(
            backbone,
            part.inputs,
            batch_size=config.batch_size,
            device=device,
            description=f"{label} {name}",
            cache=cache,
        )
        for name, part in parts.items()
    }
    features["train"] = features["train"][rows]
    if parts["train"].info.kind == "vqa":  # the question is half of the input: TF-IDF beside the image
        from medfm.evaluate.classical.text import QuestionFeatures

        train_questions = [parts["train"].inputs["question"][i] for i in rows]
        questions = QuestionFeatures().fit(train_questions)
        features["train"] = np.hstack([features["train"], questions.transform(train_questions)])
        for name in ("val", "test"):
            features[name] = np.hstack([features[name], questions.transform(parts[name].inputs["question"])])
    return features


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers (which random or pretrained weights it holds)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class EvalMemo:
    """What runs of one process can share: loaded tasks, frozen features keyed by the backbone's weights
    and preprocessing (so a grid of runs encodes each distinct backbone once), and seen-subject checks."""

    tasks: dict[str, TaskData] = field(default_factory=dict)
    features: dict[tuple, dict[bytes, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))
    encoding: dict[tuple, dict[str, float]] = field(default_factory=dict)  # first encoding's time and count
    seen: dict[tuple, SeenCheck] = field(default_factory=dict)  # (bundle, task, test examples) -> check

    def task(self, name: str, options: dict[str, Any]) -> TaskData:
        key = f"{name}:{json.dumps(options, sort_keys=True, default=str)}"
        if key not in self.tasks:
            self.tasks[key] = TASKS.get(name)(**options).load()
        return self.tasks[key]


class Evaluation:
    """Runs the plan of one config and collects predictions, timings and fit details."""

    def __init__(self, config: EvalConfig, run: Run, out: Path, memo: EvalMemo | None = None):
        self.config = config
        self.run = run
        self.out = out
        self.device = pick_device(config.device)
        self.predictions: list[Predictions] = []
        self.val_predictions: list[Predictions] = []
        self.draws: dict[tuple[str, str, str], list[Predictions]] = defaultdict(list)
        self.memo = memo or EvalMemo()
        self.source = resolve_encoder(config.encoder) if config.encoder else None
        if self.source is not None and config.encoder_label:
            self.source = replace(self.source, label=config.encoder_label)
        self.pretraining = pretraining_of(self.source)
        self.seen: dict[str, set[str]] = {}  # per checked task: the test subjects pretraining saw
        self.infos: dict[str, TaskInfo] = {}  # as loaded: a folder task's modality is the user's
        self.notes: list[str] = []  # how tasks were evaluated, where it is not the default
        self.skipped: list[str] = []  # requested baselines that could not run, with the reason

    def record(self, pred: Predictions, seconds: float, split: str, **details: Any) -> None:
        folder = self.out / "predictions" / pred.task / ("" if split == "test" else split)
        folder.mkdir(parents=True, exist_ok=True)
        name = "-".join(p for p in (pred.model, pred.protocol, pred.setting) if p)
        draw = details.get("draw")
        name += f"-draw{draw}" if draw is not None else ""
        pred.save(folder / (safe_name(name) + ".npz"))
        if split != "test":
            self.val_predictions.append(pred)
            return
        if pred.protocol == "fewshot":
            self.draws[(pred.task, pred.model, pred.setting)].append(pred)
        else:
            self.predictions.append(pred)
        self.run.log(
            task=pred.task,
            model=pred.model,
            protocol=pred.protocol,
            setting=pred.setting,
            seconds=round(seconds, 2),
            **details,
        )

    def features(
        self, backbone: Backbone, data: TaskData, parts, rows, label: str, log_cost: bool
    ) -> dict[str, np.ndarray]:
        """Frozen features through the memo; the cost of encoding logged beside them if ``log_cost``."""
        # tasks of one source share images (the two pneumonia splits), unless the backbone's preprocessing
        # is fitted to the training examples (ICU series): then which examples those were is in the key
        fitted = type(backbone).fit is not Backbone.fit
        fitted_on = "\n".join(parts["train"].sample_ids[rows].astype(str)).encode() if fitted else b""
        key = (
            weights_digest(backbone),
            backbone.preprocessing(),
            data.info.source,
            data.name if fitted else "",
            hashlib.blake2b(fitted_on, digest_size=16).hexdigest() if fitted else "",
        )
        start = time.time()
        cache = self.memo.features[key]
        before = len(cache)
        x = frozen_features(backbone, parts, rows, self.config, self.device, f"{data.name} {label}", cache)
        seconds = time.time() - start
        if len(cache) > before and key not in self.memo.encoding:
            encoded = len(cache) - before
            self.memo.encoding[key] = {"encoded": encoded, "encode_seconds": round(seconds, 3)}
        log.info("%s / %s: features in %.1f s", data.name, label, seconds)
        if not log_cost:
            return x
        encoding = self.memo.encoding.get(key, {})
        one = {k: v.to(self.device) for k, v in backbone.collate(parts["train"].inputs, [0]).items()}
        throughput = encoding and round(encoding["encoded"] / max(encoding["encode_seconds"], 1e-9), 2)
        self.run.log(
            task=data.name,
            model=label,
            event="backbone",
            parameters=count_parameters(backbone),
            flops_per_example=flops_per_example(lambda: backbone(one), batch_size=1),
            features_cached=len(cache) == before,
            throughput=throughput or None,
            **encoding,
        )
        return x

    def folds(self, data: TaskData) -> list[Fold]:
        """The task's own split, or cross-validation folds (logged, and noted in the report)."""
        k = folds_for(data, self.config.cv_folds, self.config.cv_below)
        if not k:
            return task_split(data)
        why = (
            f"{len(data)} examples, fewer than cv_below={self.config.cv_below}"
            if self.config.cv_folds == AUTO
            else f"cv_folds={k}"
        )
        log.info(
            "task %s: %d-fold cross-validation grouped by subject (%s); out-of-fold predictions are pooled",
            data.name,
            k,
            why,
        )
        self.notes.append(
            f"Task {data.name}: {k}-fold cross-validation grouped by subject and stratified by class "
            f"({why}); each example is tested once by the models of its fold, and the pooled out-of-fold "
            f"predictions are scored as one test set of {len(data)} examples."
        )
        return cross_validation(data, k)

    def check_seen(self, data: TaskData, test: np.ndarray) -> TaskData:
        """Count the test subjects the encoder saw in pretraining; stop, or flag the unseen ones."""
        if self.pretraining is None:
            return data
        key = (  # the options too: two folders can hold the same file names
            str(self.pretraining.bundle),
            data.name,
            json.dumps(self.config.task_options.get(data.name, {}), sort_keys=True, default=str),
            hashlib.blake2b(data.sample_ids[test].astype(str).tobytes()).hexdigest(),
        )
        if key not in self.memo.seen:  # a grid's cells evaluate one bundle on one task many times
            self.memo.seen[key] = check_task(data, test, self.pretraining)
        check = self.memo.seen[key]
        if check.checked:
            self.seen[data.name] = set(data.subjects[test][check.seen].astype(str))
        found = f"{check.subjects} of {check.of}" if check.checked else f"unknown how many of {check.of}"
        self.notes.append(f"Task {data.name}: {found} test subjects seen in pretraining ({check.how}).")
        return refuse_or_flag(data, test, check, self.config.allow_seen, self.pretraining.bundle)

    def task(self, name: str) -> None:
        data = self.memo.task(name, self.config.task_options.get(name, {}))
        self.infos[name] = data.info
        if self.config.limit and len(data) > self.config.limit:
            # the same subset whatever the run's seed: seeds perturb training, never the test examples
            data = limit_examples(data, self.config.limit, seed=0)
        folds = self.folds(data)
        data = self.check_seen(data, np.concatenate([fold.test for fold in folds]))
        parts = [{s: data.select(getattr(fold, s)) for s in ("train", "val", "test")} for fold in folds]
        rows = [train_rows(p["train"], self.config.train_subsample, self.config.seed) for p in parts]
        runs = OutOfFold(data, folds)
        models, skipped = plan_models(data, self.source, self.config)
        self.skipped += [f"task {name}: {reason}" for reason in skipped]
        # validation predictions are pooled like test ones, so every fold needs a validation part
        score_val = self.config.score_val and all(len(p["val"]) for p in parts)
        for model in models:
            backbone = model.make()
            for index, (fold_parts, fold_rows) in enumerate(zip(parts, rows)):
                self.run_model(model, backbone, data, fold_parts, fold_rows, runs, index == 0, score_val)
        if "classical" in self.config.baselines and data.info.classical:
            for fold_parts, fold_rows in zip(parts, rows):
                start = time.time()
                train, test = fold_parts["train"].select(fold_rows), fold_parts["test"]
                prob = fit_predict(CLASSICAL.get(data.info.classical), train, test, self.config.seed)
                runs.add("test", data.info.classical, "classical", prob, time.time() - start)
        for split, pred, seconds, details in runs.pooled():
            self.record(pred, seconds, split, **details)

    def run_model(
        self,
        model: Model,
        backbone: Backbone,
        data: TaskData,
        parts,
        rows,
        runs: OutOfFold,
        first: bool,
        score_val: bool,
    ) -> None:
        """Every protocol of ``model`` on one fold (``first``: log the backbone's cost); probabilities go
        to ``runs``, validation ones too with ``score_val``."""
        train, val, test = parts["train"].select(rows), parts["val"], parts["test"]
        outputs, multilabel = data.num_outputs, data.info.multilabel
        backbone.fit(train.inputs)
        frozen = [p for p in model.protocols if p in FROZEN]
        if frozen:
            x = self.features(backbone, data, parts, rows, model.label, log_cost=first)
        if "linear_probe" in frozen:
            start = time.time()
            probe, fit = select_probe(
                (x["train"], train.y), (x["val"], val.y), outputs, multilabel, self.config.linear_probe
            )
            prob = predict_probe(probe, x["test"], multilabel)
            runs.add("test", model.label, "linear_probe", prob, time.time() - start, **fit)
            if score_val:
                runs.add("val", model.label, "linear_probe", predict_probe(probe, x["val"], multilabel))
        if "knn" in frozen:
            start = time.time()
            prob = knn_predict(x["train"], train.y, x["test"], outputs, multilabel, self.config.knn)
            runs.add("test", model.label, "knn", prob, time.time() - start)
            if score_val:
                prob = knn_predict(x["train"], train.y, x["val"], outputs, multilabel, self.config.knn)
                runs.add("val", model.label, "knn", prob)
        if "fewshot" in frozen:
            start = time.time()
            for k, draw, prob in few_shot(
                x["train"], train.y, x["test"], outputs, multilabel, self.config.fewshot, self.config.seed
            ):
                runs.add(
                    "test", model.label, "fewshot", prob, time.time() - start, setting=f"k={k}", draw=draw
                )
                start = time.time()
        if "finetune" in model.protocols:
            start = time.time()
            prob, fit = finetune(
                backbone,
                (train.inputs, train.y),
                (val.inputs, val.y),
                test.inputs,
                outputs,
                multilabel,
                model.finetune,
                device=self.device,
                seed=self.config.seed,
                description=f"{data.name} {model.label} fine-tune",
            )
            runs.add("test", model.label, "finetune", prob, time.time() - start, **fit)

    def rows(self, pool: Executor) -> pd.DataFrame:
        """Every prediction scored (bootstrap intervals computed in ``pool``)."""
        scored = [(pred, "test") for pred in self.predictions]
        scored += [(pred, "val") for pred in self.val_predictions]
        jobs = [
            pool.submit(
                score,
                pred,
                self.infos[pred.task].modality,
                n_boot=self.config.n_boot,
                seed=self.config.seed,
                whole_set=split,
            )
            for pred, split in scored
        ]
        rows = [row for job in jobs for row in job.result()]
        for (task, _, _), draws in self.draws.items():
            rows += score_draws(draws, self.infos[task].modality)
        table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
        if self.pretraining is not None:
            counts = self.seen_counts()
            table[SEEN_COLUMN] = [counts.get(key, np.nan) for key in zip(table["task"], table["eval_set"])]
        return table

    def seen_counts(self) -> dict[tuple[str, str], int]:
        """(task, eval set) -> how many of the set's subjects the encoder saw in pretraining."""
        counts = {}
        for pred in self.predictions:
            seen = self.seen.get(pred.task)
            if seen is None:
                continue
            subjects = pred.subjects.astype(str)
            for name, mask in {"test": np.ones(len(subjects), bool), **pred.flags}.items():
                counts[(pred.task, name)] = len(set(subjects[np.asarray(mask, bool)]) & seen)
        return counts

    def comparisons(self, pool: Executor) -> pd.DataFrame:
        """The encoder against each baseline, paired on the same test subjects (AUROC)."""
        if self.source is None:
            return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
        by_key = {(p.task, p.model, p.protocol): p for p in self.predictions}
        jobs = []
        pairs = [
            ("linear_probe", self.source.random_label, "linear_probe"),
            ("finetune", "resnet18 (scratch)", "finetune"),
        ]
        for task in dict.fromkeys(p.task for p in self.predictions):
            classical = self.infos[task].classical
            for protocol, other, other_protocol in [*pairs, ("linear_probe", classical, "classical")]:
                a = by_key.get((task, self.source.label, protocol))
                b = by_key.get((task, other, other_protocol))
                if a is None or b is None:
                    continue
                job = pool.submit(
                    paired_bootstrap,
                    a.y,
                    a.prob,
                    b.prob,
                    a.subjects,
                    a.multilabel,
                    metric="auroc",
                    n_boot=2 * self.config.n_boot,
                    seed=self.config.seed,
                )
                jobs.append((task, protocol, other_protocol, a, b, job))
        rows = []
        for task, protocol, other_protocol, a, b, job in jobs:
            test = job.result()
            rows.append(
                {
                    "task": task,
                    "protocol": protocol,
                    "metric": "auroc",
                    "model_a": f"{a.model} ({protocol})",
                    "model_b": f"{b.model} ({other_protocol})",
                    **{k: test[k] for k in ("value_a", "value_b", "diff", "ci_low", "ci_high", "p_value")},
                }
            )
        table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
        table["p_holm"] = holm_adjusted(table["p_value"].to_numpy(dtype=float))
        return table


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text).strip("_")


def run_eval(config: EvalConfig, memo: EvalMemo | None = None) -> dict[str, Path]:
    """Evaluate, score and report; return the paths of the files written.

    ``memo`` carries loaded tasks and frozen features from earlier runs of this process (grids of runs).
    """
    config.check()
    out = Path(config.output)
    run = Run.create(out, config, seeds={"seed": config.seed, "random_init_seed": config.random_init_seed})
    evaluation = Evaluation(config, run, out, memo)
    started = time.time()
    with seeded(config.seed):  # whatever draws from torch's generators, without changing the caller's
        for name in config.tasks:
            log.info("task %s", name)
            evaluation.task(name)
    log.info(
        "scoring: %d predictions, %d bootstrap resamples each", len(evaluation.predictions), config.n_boot
    )
    with make_executor(config.workers) as pool:
        rows = evaluation.rows(pool)
        comparisons = evaluation.comparisons(pool)
    comparisons.to_csv(out / "comparisons.csv", index=False)
    how = evaluation.notes + [f"Skipped: {reason}." for reason in evaluation.skipped]
    summary = {"tasks": config.tasks, "rows": len(rows), "notes": how}
    if not config.report:
        rows.to_csv(out / "results.csv", index=False)
        run.finish(seconds=round(time.time() - started, 1), **summary)
        return {"results.csv": out / "results.csv", "comparisons.csv": out / "comparisons.csv"}
    notes = [
        f"Encoder: {evaluation.source.label if evaluation.source else 'none (registered baselines only)'}"
        + (f" ({evaluation.source.path})" if evaluation.source and evaluation.source.path else ""),
        f"Intervals: 95 % bootstrap over test subjects ({config.n_boot} resamples); "
        "few-shot: 2.5-97.5 % range over draws.",
        f"Comparisons: paired subject bootstrap of AUROC, one-sided p for 'encoder better' "
        f"({2 * config.n_boot} resamples), and that p Holm-adjusted over every comparison of the table.",
        *how,
    ]
    paths = write_report(
        out, rows, evaluation.predictions, title="medfm benchmark", comparisons=comparisons, notes=notes
    )
    run.finish(seconds=round(time.time() - started, 1), **summary)
    log.info("results in %s (report: %s)", out, out / "report.html")
    return paths
