"""One strategy through the whole stream: train each step with the engine, then score every experience.

The result of a strategy is its result matrices (``R[i, j]``: experience j scored after step i, on
validation and test), the scores of the starting model (forward transfer's reference), each step's
training time and steps, the strategy's extra memory, and every test prediction (for subject-bootstrap
intervals). Strategies run in separate processes: this module's :func:`learn` takes only paths and plain
values.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from medfm.config import load_config
from medfm.continual.config import ContinualConfig
from medfm.continual.model import ContinualModel, build_model, split_logits
from medfm.continual.strategies import STRATEGIES, Strategy, steps_for
from medfm.continual.stream import Experience, Stream, load_stream
from medfm.engine.hooks import Hook
from medfm.engine.trainer import Trainer
from medfm.evaluate.metrics import compute_metrics
from medfm.log import get_logger, setup_logging
from medfm.measure import measure
from medfm.runs import Run

log = get_logger("continual.learner")

SCORED_SPLITS = ("val", "test")


class StreamData(Dataset):
    """The training examples of some experiences, as ``(experience, row)`` pairs (the engine's sampler
    passes ``(index, seed)``; nothing here is random)."""

    def __init__(self, stream: Stream, experiences: list[int]):
        self.stream = stream
        self.pairs = [(e, r) for e in experiences for r in range(len(stream.experiences[e]))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int]:
        return self.pairs[item[0]]

    def collate(self, pairs: list[tuple[int, int]]) -> dict[str, Any]:
        """One part per experience in the batch: inputs of different modalities are not stacked."""
        parts = []
        for index in sorted({e for e, _ in pairs}):
            experience = self.stream.experiences[index]
            rows = torch.tensor([r for e, r in pairs if e == index])
            train = experience.splits["train"]
            parts.append(
                {
                    "experience": index,
                    "head": experience.head,
                    "inputs": {key: value[rows] for key, value in train.inputs.items()},
                    "y": train.y[rows],
                }
            )
        return {"parts": parts}


class StepTag(Hook):
    """Marks each metrics line with the step of the stream it belongs to."""

    name = "step"

    def __init__(self, index: int, experience: str):
        self.index, self.experience = index, experience

    def on_log(self, trainer, record):
        record["stream_step"], record["experience"] = self.index, self.experience


def predict(model: ContinualModel, experience: Experience, split: str) -> np.ndarray:
    """Probabilities on a split with the experience's head (softmax, or sigmoids for multi-label heads)."""
    logits = split_logits(model, experience, split)
    multilabel = model.multilabel[experience.head]
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).numpy()


def score_step(
    stream: Stream, metric: str, scorers: list[ContinualModel | None]
) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Each experience scored by its scorer (None: left NaN) on validation and test: one row of R per
    split, and the test probabilities by experience."""
    row = {split: np.full(len(scorers), np.nan) for split in SCORED_SPLITS}
    test: dict[int, np.ndarray] = {}
    for j, (experience, scorer) in enumerate(zip(stream.experiences, scorers)):
        if scorer is None:
            continue
        multilabel = scorer.multilabel[experience.head]
        for split in SCORED_SPLITS:
            prob = predict(scorer, experience, split)
            y = experience.splits[split].y.numpy()
            row[split][j] = compute_metrics(y, prob, multilabel, [metric])[metric]
            if split == "test":
                test[j] = prob
    return row, test


def start_worker(threads: int) -> None:
    """A strategy's process: its share of the cores, and log lines on the shared console."""
    setup_logging()
    torch.set_num_threads(threads)


def learn(config_path: str, strategy_index: int, stream_folder: str, output: str, key: str = "") -> dict:
    """Run strategy ``strategy_index`` of the config over the prepared stream; write and return its result
    (``key`` records the settings it ran with, so a later run knows whether to reuse it)."""
    config = load_config(ContinualConfig, config_path)
    strategy_config = config.strategies[strategy_index]
    stream = load_stream(Path(stream_folder))
    folder = Path(output)
    run = Run.create(folder, strategy_config, seeds={"seed": config.seed})
    model = build_model(stream, config.signal_patch, config.seed)
    strategy: Strategy = STRATEGIES.get(strategy_config.name)(
        strategy_config, stream, config.seed, config.train.batch_size
    )
    strategy.start(model)
    T = len(stream.experiences)
    matrices = {split: np.full((T, T), np.nan) for split in SCORED_SPLITS}
    initial, probabilities = score_step(stream, config.metric, [model] * T)
    predictions = {f"initial/{j}": prob for j, prob in probabilities.items()}
    steps, seconds, memory = [], [], []
    with measure() as total_cost:
        for i, experience in enumerate(stream.experiences):
            model_i = strategy.model_for(i, model)
            trained = strategy.training_data(i)
            taken, cost_seconds = 0, 0.0
            if trained:
                taken, cost_seconds = train_step(config, stream, strategy, model_i, i, trained, folder, run)
                strategy.after_experience(i, model_i)
            model = model_i
            steps.append(taken)
            seconds.append(round(cost_seconds, 2))
            memory.append(strategy.memory_bytes())
            row, probabilities = score_step(
                stream, config.metric, [strategy.scorer(i, j, model) for j in range(T)]
            )
            for split in SCORED_SPLITS:
                matrices[split][i] = row[split]
            predictions.update({f"{i}/{j}": prob for j, prob in probabilities.items()})
            log.info(
                "%s after %s: %s %s",
                strategy_config.title,
                experience.name,
                config.metric,
                " ".join(f"{v:.3f}" for v in row["test"]),
            )
    result = {
        "key": key,
        "strategy": strategy_config.name,
        "label": strategy_config.title,
        "metric": config.metric,
        "experiences": stream.names,
        "R": {split: m.tolist() for split, m in matrices.items()},
        "initial": {split: values.tolist() for split, values in initial.items()},
        "steps": steps,
        "train_seconds": seconds,
        "memory_bytes": memory,
        "wall_seconds": round(total_cost.wall_seconds, 2),
        "peak_rss_mb": round(total_cost.peak_rss_mb, 1),
        "energy_wh": round(total_cost.energy_wh, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    np.savez(folder / "predictions.npz", **predictions)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    (folder / "result.json").write_text(json.dumps(result, indent=1, allow_nan=True))
    run.finish(acc=float(np.nanmean(matrices["test"][-1])))
    return result


def train_step(
    config: ContinualConfig,
    stream: Stream,
    strategy: Strategy,
    model: ContinualModel,
    index: int,
    experiences: list[int],
    folder: Path,
    run: Run,
) -> tuple[int, float]:
    """Train ``model`` on the training data of ``experiences`` with the engine; return steps and seconds."""
    dataset = StreamData(stream, experiences)
    batch_size = max(2, min(config.train.batch_size, len(dataset)))
    # Each experience brings its examples times its epochs (joint training: the sum over the stream).
    passes = sum(
        len(stream.experiences[e]) * (config.experiences[e].epochs or config.train.epochs)
        for e in experiences
    )
    steps = steps_for(passes, batch_size, 1.0, config.train.max_steps)
    engine = config.train.engine(steps, config.seed + index)
    engine.batch_size = batch_size
    hooks = [StepTag(index, stream.experiences[index].name), *strategy.hooks(index, model)]
    workdir = folder / f"training_{index}"  # the engine's checkpoint of this step; removed once trained
    trainer = Trainer(model, dataset, engine, workdir, hooks=hooks, run=run, collate=dataset.collate)
    start = time.perf_counter()
    trainer.fit()
    shutil.rmtree(workdir, ignore_errors=True)
    return steps, time.perf_counter() - start
