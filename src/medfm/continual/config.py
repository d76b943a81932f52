"""The config of a continual-learning study: a stream of experiences (scenario, tasks, classes), the shared
trunk it starts from, the strategies compared on it, and how each experience is trained and scored.

Scenarios (van de Ven et al. 2022, "Three types of incremental learning"):

* ``domain``: one task across domains (sites, resolutions, modalities); one head shared by every
  experience, so experiences must agree on the label space and the input shape.
* ``task``: a new task per experience, each with its own head on the shared trunk; the task is known at
  test time.
* ``class``: new classes per experience on one head that grows over the stream's classes; the task is not
  known at test time, so scores are accuracies over every class of the stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medfm.continual.buffers import parse_bytes
from medfm.engine.trainer import TrainConfig
from medfm.errors import ConfigError

SCENARIOS = ("domain", "task", "class")
STRATEGY_NAMES = ("naive", "joint", "specialised", "replay", "ewc", "lwf", "der")
REPLAY_POLICIES = ("reservoir", "class_balanced")
METRICS = ("auroc", "accuracy", "balanced_accuracy")


@dataclass
class ExperienceConfig:
    task: str = ""  # a registered evaluation task (`medfm tasks`)
    name: str = ""  # its name in tables and figures (default: the task, with its classes when chosen)
    classes: list[str] = field(default_factory=list)  # keep only these classes (class-incremental)
    rename: dict[str, str] = field(default_factory=dict)  # class renames, so tasks can share a label space
    root: str = ""  # the task's data folder (default: its folder under MEDFM_DATA_ROOT)
    limit: int = 0  # read at most this many examples (smoke runs)
    image_size: int = 0  # 0: the stream's image_size
    epochs: float = 0.0  # passes over its training examples (0: train.epochs); small experiences need more

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return f"{self.task}[{'+'.join(self.classes)}]" if self.classes else self.task


@dataclass
class ReplayConfig:
    policy: str = "reservoir"  # reservoir | class_balanced
    fraction: float = 0.05  # room for this fraction of the stream's training examples ...
    examples: int = 0  # ... or for this many (wins over fraction)
    bytes: str = ""  # and at most this much memory ("10MB", "512KiB"); empty: no byte cap
    batch_size: int = 0  # replayed examples added to each training batch (0: the training batch size)


@dataclass
class EWCConfig:
    strength: float = 1000.0  # lambda of the quadratic penalty
    fisher_examples: int = 512  # training examples the diagonal Fisher information is estimated on
    fisher_batch_size: int = 16


@dataclass
class LwFConfig:
    alpha: float = 1.0  # weight of the distillation term
    temperature: float = 2.0


@dataclass
class DERConfig:
    alpha: float = 0.3  # weight of matching the stored logits (DER)
    beta: float = 0.5  # weight of the stored labels (the "++")


@dataclass
class StrategyConfig:
    name: str = "naive"  # naive | joint | specialised | replay | ewc | lwf | der
    label: str = ""  # its name in tables (default: the name, with the replay policy for replay)
    replay: ReplayConfig = field(default_factory=ReplayConfig)  # replay and der
    ewc: EWCConfig = field(default_factory=EWCConfig)
    lwf: LwFConfig = field(default_factory=LwFConfig)
    der: DERConfig = field(default_factory=DERConfig)

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        if self.name == "replay" and self.replay.policy != "reservoir":
            return f"replay ({self.replay.policy.replace('_', '-')})"
        return self.name


@dataclass
class ExperienceTrainConfig:
    """How each experience is trained (the engine's loop; a fresh AdamW per experience)."""

    epochs: float = 1.0  # passes over the experience's training examples
    max_steps: int = 0  # cap on optimiser steps per experience (0: none)
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 10
    weight_decay: float = 0.05
    clip_grad: float = 1.0
    log_every: int = 10
    device: str = "cpu"  # cpu | cuda | auto (the stream's tensors are moved batch by batch)

    def engine(self, steps: int, seed: int) -> TrainConfig:
        """The engine config of one experience of ``steps`` steps (data in memory: no loader workers)."""
        return TrainConfig(
            steps=steps,
            batch_size=self.batch_size,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_steps=min(self.warmup_steps, steps // 2),
            weight_decay=self.weight_decay,
            weight_decay_end=self.weight_decay,
            clip_grad=self.clip_grad,
            log_every=self.log_every,
            checkpoint_every=0,
            keep_checkpoints=1,
            workers=0,
            seed=seed,
            device=self.device,
        )


@dataclass
class ContinualConfig:
    name: str = "continual"
    output: str = ""  # run folder (default: runs/continual/<name>)
    scenario: str = "task"  # domain | task | class
    encoder: str = "test_vit"  # the shared trunk: a pretrained bundle folder, or a registered ViT name
    image_size: int = 32  # images are resized to this (per experience: image_size there)
    signal_length: int = 3000  # ECG samples per record (centre crop or zero pad)
    signal_patch: int = 50  # ECG samples per token
    experiences: list[ExperienceConfig] = field(default_factory=list)
    strategies: list[StrategyConfig] = field(
        default_factory=lambda: [StrategyConfig("naive"), StrategyConfig("joint"), StrategyConfig("replay")]
    )
    train: ExperienceTrainConfig = field(default_factory=ExperienceTrainConfig)
    metric: str = "auroc"  # auroc | accuracy | balanced_accuracy (class-incremental: accuracies only)
    bootstrap: int = 1000  # subject resamples for the intervals of the final scores (0: none)
    seed: int = 0
    workers: int = 1  # strategies trained side by side in this many processes (0: in this process)
    # a trunk whose pretraining saw an experience's test subject stops the run; true goes on, logging it
    allow_seen: bool = False

    @property
    def folder(self) -> str:
        return self.output or f"runs/continual/{self.name}"

    def check(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if len(self.experiences) < 2:
            raise ConfigError(
                f"a stream needs at least 2 experiences, the config has {len(self.experiences)}"
            )
        for number, experience in enumerate(self.experiences, 1):
            if not experience.task:
                raise ConfigError(f"experience {number} names no task")
        if self.scenario == "class" and any(not e.classes for e in self.experiences):
            raise ConfigError(
                "a class-incremental stream names the classes of every experience (classes: [...])"
            )
        labels = [e.label for e in self.experiences]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"experience names must differ (give each a name): {labels}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.scenario == "class" and self.metric == "auroc":
            raise ConfigError(
                "a class-incremental stream is scored by accuracy or balanced_accuracy over every class of "
                "the stream; AUROC within one experience's classes would tell the model which task it faces"
            )
        if not self.strategies:
            raise ConfigError("no strategies to run")
        for strategy in self.strategies:
            check_strategy(strategy)
        titles = [s.title for s in self.strategies]
        if len(set(titles)) != len(titles):
            raise ConfigError(f"strategies must have distinct labels (set label:): {titles}")
        if self.train.epochs <= 0 or self.train.batch_size < 2:
            raise ConfigError("train.epochs must be > 0 and train.batch_size >= 2")
        if any(e.epochs < 0 for e in self.experiences):
            raise ConfigError("an experience's epochs must be >= 0 (0: train.epochs)")
        if self.signal_length < self.signal_patch or self.signal_patch < 1:
            raise ConfigError("signal_patch must be between 1 and signal_length")


def check_strategy(strategy: StrategyConfig) -> None:
    if strategy.name not in STRATEGY_NAMES:
        raise ConfigError(f"unknown strategy {strategy.name!r}; choose from {STRATEGY_NAMES}")
    replay = strategy.replay
    if replay.policy not in REPLAY_POLICIES:
        raise ConfigError(f"replay.policy must be one of {REPLAY_POLICIES}, got {replay.policy!r}")
    if not 0 < replay.fraction <= 1 and not replay.examples:
        raise ConfigError(f"replay.fraction must be in (0, 1], got {replay.fraction}")
    if replay.examples < 0 or replay.batch_size < 0:
        raise ConfigError("replay.examples and replay.batch_size must be >= 0")
    if replay.bytes:
        try:
            parse_bytes(replay.bytes)
        except ValueError as err:
            raise ConfigError(f"replay.bytes: {err}") from None
    if strategy.ewc.strength < 0 or strategy.lwf.alpha < 0 or strategy.lwf.temperature <= 0:
        raise ConfigError("ewc.strength and lwf.alpha must be >= 0, lwf.temperature > 0")


def slug(text: str) -> str:
    """A label as a folder or file name: ``replay (class-balanced)`` -> ``replay-class-balanced``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
