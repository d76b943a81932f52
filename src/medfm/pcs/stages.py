"""The medfm stages a grid can perturb, each behind one contract (:class:`Stage`).

A stage runs one cell: it takes its resolved config and a folder, and returns the cell's result rows
(the columns of ``stability.UNIT`` plus ``value``, ``ci_low``, ``ci_high``, ``n``), its test predictions
(for agreement across cells), what each model costs, and the cards of its data and models. Pretraining,
federated and continual stages join by registering here; the runner, checks, summaries, report and
``medfm pcs reproduce`` do not change.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm.registry import Registry


@dataclass
class CellPredictions:
    """One model's test predictions in one cell: what agreement across cells compares."""

    unit: dict[str, str]  # task, model, protocol, setting
    sample_ids: np.ndarray
    labels: np.ndarray  # predicted class per example ([N]); multi-label: [N, K] presence at 0.5


@dataclass
class CellOutput:
    rows: pd.DataFrame
    predictions: list[CellPredictions] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)  # one per model: parameters, FLOPs, ...


@dataclass(frozen=True)
class Stage:
    name: str
    config_type: type
    run: Callable[[Any, Path], CellOutput]  # (resolved config, cell folder) -> output
    defaults: dict[str, Any]  # settings every cell of this stage gets before the grid's base
    cards: Callable[[Any], dict[str, str]]  # config -> {"data": Markdown, "model": Markdown}
    inputs: Callable[[Any], dict[str, Path]]  # config -> the data and weights it reads (fingerprinted)
    metrics: tuple[str, ...]  # the metrics its rows hold (what a check or a report may name)
    # cells of equal affinity share expensive work (run them in one process); "" : nothing shared
    affinity: Callable[[Any], str] = lambda config: ""
    cost: Callable[[Any], float] = lambda config: 1.0  # relative work of a cell: how workers are balanced
    forget: Callable[[], None] = lambda: None  # drop what earlier cells of this process left to reuse


STAGES: Registry[Stage] = Registry("stage")
# Stages defined with their own part of medfm, which register themselves when imported.
STAGE_MODULES = ("medfm.scale.stage",)


def get_stage(name: str) -> Stage:
    """The stage registered as ``name`` (stage modules are imported first, so every stage is known)."""
    for module in STAGE_MODULES:
        importlib.import_module(module)
    return STAGES.get(name)


# -- evaluation --------------------------------------------------------------------------------------


@functools.cache
def eval_memo():
    """This process's memo of loaded tasks and features, shared by the cells it runs."""
    from medfm.evaluate.suite import EvalMemo

    return EvalMemo()


def eval_rows(folder: Path) -> pd.DataFrame:
    """An evaluation's result rows with the split each was scored on (validation rows: eval set "val")."""
    from medfm.pcs.runner import read_rows

    rows = read_rows(folder / "results.csv")
    rows["split"] = np.where(rows["eval_set"] == "val", "val", "test")
    return rows


def run_eval_cell(config, folder: Path, memo=None) -> CellOutput:
    """One evaluation; ``memo`` (default: this process's) holds loaded tasks and features to reuse."""
    from medfm.evaluate.predictions import Predictions
    from medfm.evaluate.suite import run_eval
    from medfm.runs import read_metrics

    config = copy.deepcopy(config)
    config.output = str(folder)
    run_eval(config, memo=memo or eval_memo())
    rows = eval_rows(folder)
    predictions = []
    for path in sorted((folder / "predictions").glob("*/*.npz")):  # test predictions (val sit deeper)
        pred = Predictions.load(path)
        if pred.protocol == "fewshot":
            continue  # repeated draws within the cell: not one rater
        labels = (pred.prob >= 0.5).astype(int) if pred.multilabel else pred.prob.argmax(axis=1)
        unit = {"task": pred.task, "model": pred.model, "protocol": pred.protocol, "setting": pred.setting}
        predictions.append(CellPredictions(unit, np.asarray(pred.sample_ids).astype(str), labels))
    costs = [
        {k: v for k, v in record.items() if k not in ("time", "event")}
        for record in read_metrics(folder)
        if record.get("event") == "backbone"
    ]
    return CellOutput(rows, predictions, costs)


def eval_inputs(config) -> dict[str, Path]:
    from medfm.evaluate.encoders import bundle_path
    from medfm.evaluate.tasks import TASKS

    inputs = {
        f"task {name}": TASKS.get(name)(**config.task_options.get(name, {})).root for name in config.tasks
    }
    path = bundle_path(config.encoder) if config.encoder else None
    return {**inputs, **({"encoder": path} if path is not None else {})}


def eval_affinity(config) -> str:
    """Cells that encode the same images through the same weights at the same size share features."""
    random_seed = config.seed if config.random_init_seed < 0 else config.random_init_seed
    parts = (config.encoder, config.tasks, config.image_size, config.intensity, config.limit, random_seed)
    return repr(parts)


def eval_cards(config) -> dict[str, str]:
    """A data card per task (examples, subjects and classes per split; source, license, split rule) and
    the encoder's model card."""
    from medfm.evaluate.encoders import bundle_path
    from medfm.evaluate.tasks import TASKS

    memo = eval_memo()
    data_lines = []
    for name in config.tasks:
        options = config.task_options.get(name, {})
        task, data = TASKS.get(name)(**options), memo.task(name, options)
        data_lines += [f"### {name}", "", f"{data.info.description}", ""]
        split = data.info.split
        if split == "subject":
            split += " (" + ", ".join(f"{s} {f:g}" for s, f in data.info.fractions) + ")"
        data_lines += [
            f"- source adapter `{data.info.source}`, modality {data.info.modality}, split: {split}",
            f"- data folder `{task.root.name}`",
            *([f"- cite: {data.info.citation}"] if data.info.citation else []),
            "",
            "| split | examples | subjects | " + " | ".join(data.classes) + " |",
            "|---|---|---|" + "---|" * len(data.classes),
        ]
        for split in ("train", "val", "test"):
            part = data.split == split
            counts = data.class_counts(split)
            data_lines.append(
                f"| {split} | {int(part.sum())} | {len(set(data.subjects[part]))} | "
                + " | ".join(str(counts[c]) for c in data.classes)
                + " |"
            )
        data_lines.append("")
    path = bundle_path(config.encoder) if config.encoder else None
    card = path / "MODEL_CARD.md" if path is not None and path.is_dir() else None
    if card is not None and card.is_file():
        model = card.read_text()
    else:
        model = f"Encoder `{config.encoder or 'none'}`: a registered architecture with random weights."
    return {"data": "\n".join(data_lines), "model": model}


def _register_eval() -> None:
    from medfm.evaluate.metrics import METRICS
    from medfm.evaluate.suite import EvalConfig

    STAGES.register(
        "eval",
        Stage(
            name="eval",
            config_type=EvalConfig,
            run=run_eval_cell,
            # the report is the grid's; validation scores feed the prediction check; the cells are the
            # parallel part, so each scores in its own process
            defaults={"report": False, "score_val": True, "workers": 0, "n_boot": 200},
            cards=eval_cards,
            inputs=eval_inputs,
            metrics=METRICS,
            affinity=eval_affinity,
            forget=eval_memo.cache_clear,
        ),
    )


_register_eval()
