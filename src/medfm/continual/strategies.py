"""Continual-learning strategies as plugins on the training engine: each says which data a step of the stream
trains on, which hooks join the engine's loop (:mod:`medfm.engine.hooks`), what it keeps between
experiences and which model scores each experience. None forks the loop.

* ``naive``: fine-tune on each experience in turn (the lower bound).
* ``joint``: one model trained on every experience at once after the stream (the upper bound; its result
  matrix has only the last row).
* ``specialised``: one model per experience, each started from the pretrained trunk; an experience is
  scored by its own model once that exists.
* ``replay``: rehearsal from a memory of earlier examples (reservoir or class-balanced, capped in examples
  and in bytes), replayed examples added to each batch (experience replay, Chaudhry et al. 2019).
* ``ewc``: elastic weight consolidation (Kirkpatrick et al. 2017), one diagonal Fisher and anchor per
  earlier experience (avalanche's "separate" mode).
* ``lwf``: learning without forgetting (Li & Hoiem 2017): the model before the experience is the teacher of
  every earlier head's outputs on the new data (class-incremental: of the earlier classes' logits).
* ``der``: DER++ (Buzzega et al. 2020): replay plus matching the logits stored with each remembered
  example; one draw serves both terms and logits are stored when an experience ends (not while training).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfm.continual.buffers import BUFFERS, BufferBudget, ReplayBuffer, parse_bytes
from medfm.continual.config import StrategyConfig
from medfm.continual.model import ContinualModel, split_logits, task_loss
from medfm.continual.stream import Experience, Stream
from medfm.engine.hooks import Hook
from medfm.engine.trainer import Trainer, to_device
from medfm.registry import Registry


class Strategy:
    """The naive strategy, and the contract every strategy keeps."""

    def __init__(self, config: StrategyConfig, stream: Stream, seed: int, batch_size: int):
        self.config, self.stream, self.seed, self.batch_size = config, stream, seed, batch_size

    def start(self, model: ContinualModel) -> None:
        """Before the first experience (``model`` is the pretrained starting point)."""

    def model_for(self, index: int, model: ContinualModel) -> ContinualModel:
        """The model that trains on step ``index`` of the stream."""
        return model

    def training_data(self, index: int) -> list[int]:
        """The experiences step ``index`` trains on (none: no training at this step)."""
        return [index]

    def hooks(self, index: int, model: ContinualModel) -> list[Hook]:
        return []

    def after_experience(self, index: int, model: ContinualModel) -> None: ...

    def scorer(self, index: int, experience: int, model: ContinualModel) -> ContinualModel | None:
        """The model that scores ``experience`` after step ``index`` (None: not scored at this step)."""
        return model

    def memory_bytes(self) -> int:
        """Bytes the strategy keeps beyond the model itself (memories, anchors, teachers, extra models)."""
        return 0


STRATEGIES: Registry[type[Strategy]] = Registry("continual strategy")
STRATEGIES.register("naive", Strategy)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@STRATEGIES.register("joint")
class Joint(Strategy):
    def training_data(self, index: int) -> list[int]:
        last = len(self.stream.experiences) - 1
        return list(range(last + 1)) if index == last else []

    def scorer(self, index, experience, model):
        return model if index == len(self.stream.experiences) - 1 else None


@STRATEGIES.register("specialised")
class Specialised(Strategy):
    def start(self, model):
        self.initial = copy.deepcopy(model.state_dict())
        self.models: list[ContinualModel] = []

    def model_for(self, index, model):
        fresh = copy.deepcopy(model)
        fresh.load_state_dict(self.initial)
        return fresh

    def after_experience(self, index, model):
        self.models.append(model)

    def scorer(self, index, experience, model):
        return self.models[experience] if experience <= index else model

    def memory_bytes(self):
        return sum(tensor_bytes(m.parameters()) for m in self.models[:-1])


# ---- replay -------------------------------------------------------------------------------------


def make_buffer(config: StrategyConfig, stream: Stream, seed: int) -> ReplayBuffer:
    """The memory: room for ``fraction`` of the stream's training examples (or ``examples``), byte-capped."""
    replay = config.replay
    examples = replay.examples or max(1, round(replay.fraction * stream.train_examples))
    budget = BufferBudget(examples=examples, bytes=parse_bytes(replay.bytes) if replay.bytes else 0)
    return BUFFERS[replay.policy](budget, seed=seed)


def offer_experience(
    buffer: ReplayBuffer, experience: Experience, seed: int, logits: torch.Tensor | None = None
):
    """Offer the experience's training examples in a seeded random order (as a stream would deliver them)."""
    train = experience.splits["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order), 1024):
        rows = order[start : start + 1024]
        buffer.add(
            experience.index,
            {key: value[rows] for key, value in train.inputs.items()},
            train.y[rows],
            None if logits is None else logits[rows],
        )


class ReplayHook(Hook):
    """Adds ``count`` remembered examples (one part per experience they come from) to every batch."""

    name = "replay"

    def __init__(self, buffer: ReplayBuffer, stream: Stream, count: int, seed: int, weight: float = 1.0):
        self.buffer, self.stream, self.count, self.weight = buffer, stream, count, weight
        self.generator = torch.Generator().manual_seed(seed)

    def on_batch(self, trainer: Trainer, batch: dict[str, Any]) -> dict[str, Any]:
        if not len(self.buffer):
            return batch
        replayed = []
        for part in self.buffer.sample(self.count, self.generator):
            experience = self.stream.experiences[part.experience]
            replayed.append(
                to_device(
                    {
                        "experience": part.experience,
                        "head": experience.head,
                        "inputs": part.inputs,
                        "y": part.y,
                        "weight": self.weight,
                        "stored_logits": part.logits,
                    },
                    trainer.device,
                )
            )
        return {**batch, "parts": [*batch["parts"], *replayed]}


@STRATEGIES.register("replay")
class Replay(Strategy):
    def start(self, model):
        self.buffer = make_buffer(self.config, self.stream, self.seed)

    def hooks(self, index, model):
        return [ReplayHook(self.buffer, self.stream, self.replay_count(), self.seed + index)]

    def replay_count(self) -> int:
        return self.config.replay.batch_size or self.batch_size

    def after_experience(self, index, model):
        offer_experience(self.buffer, self.stream.experiences[index], self.seed + index)

    def memory_bytes(self):
        return self.buffer.nbytes


@STRATEGIES.register("der")
class DarkExperienceReplay(Replay):
    def hooks(self, index, model):
        der = self.config.der
        return [
            ReplayHook(self.buffer, self.stream, self.replay_count(), self.seed + index, weight=der.beta),
            LogitMatching(der.alpha),
        ]

    def after_experience(self, index, model):
        experience = self.stream.experiences[index]
        logits = split_logits(model, experience, "train")
        offer_experience(self.buffer, experience, self.seed + index, logits)


class LogitMatching(Hook):
    """DER's term: mean squared distance between the logits of remembered examples and the stored ones."""

    name = "der"

    def __init__(self, alpha: float):
        self.alpha = alpha

    def on_outputs(self, trainer, batch, outputs):
        terms = [
            F.mse_loss(logits, part["stored_logits"], reduction="sum") / logits.shape[1]
            for part, logits in zip(batch["parts"], outputs["logits"])
            if part.get("stored_logits") is not None
        ]
        if not terms:
            return outputs
        count = sum(len(part["y"]) for part in batch["parts"] if part.get("stored_logits") is not None)
        term = self.alpha * sum(terms) / count
        return {**outputs, "loss": outputs["loss"] + term, "der_loss": term.detach()}


# ---- regularisation -----------------------------------------------------------------------------


@STRATEGIES.register("ewc")
class EWC(Strategy):
    def start(self, model):
        self.penalties: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def hooks(self, index, model):
        return [EWCPenalty(model, self.penalties, self.config.ewc.strength)] if self.penalties else []

    def after_experience(self, index, model):
        ewc = self.config.ewc
        fisher = diagonal_fisher(
            model,
            self.stream.experiences[index],
            ewc.fisher_examples,
            ewc.fisher_batch_size,
            self.seed + index,
        )
        anchor = {name: p.detach().clone() for name, p in model.named_parameters() if name in fisher}
        self.penalties.append((fisher, anchor))

    def memory_bytes(self):
        return sum(tensor_bytes(f.values()) + tensor_bytes(a.values()) for f, a in self.penalties)


def diagonal_fisher(
    model: ContinualModel, experience: Experience, examples: int, batch_size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Squared gradients of the task loss, averaged over mini-batches of the experience's training data
    (avalanche's estimate); parameters the experience does not touch (other heads, tokenizers) are
    left out."""
    train = experience.splits["train"]
    device = next(model.parameters()).device
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:examples]
    sums = {name: torch.zeros_like(p) for name, p in model.named_parameters() if p.requires_grad}
    batches, training = 0, model.training
    model.eval()  # no dropout noise in the estimate
    for start in range(0, len(rows), batch_size):
        index = rows[start : start + batch_size]
        inputs = {k: v[index].to(device) for k, v in train.inputs.items()}
        model.zero_grad(set_to_none=True)
        loss = task_loss(
            model.logits(inputs, experience.head),
            train.y[index].to(device),
            model.multilabel[experience.head],
        )
        loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                sums[name] += p.grad.detach() ** 2
        batches += 1
    model.zero_grad(set_to_none=True)
    model.train(training)
    return {name: s / max(batches, 1) for name, s in sums.items() if s.any()}


class EWCPenalty(Hook):
    """``strength / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2`` added to the loss."""

    name = "ewc"

    def __init__(self, model: nn.Module, penalties, strength: float):
        self.parameters = dict(model.named_parameters())
        self.penalties, self.strength = penalties, strength

    def on_outputs(self, trainer, batch, outputs):
        total = sum(
            (fisher[name] * (self.parameters[name] - anchor[name]) ** 2).sum()
            for fisher, anchor in self.penalties
            for name in fisher
        )
        term = self.strength / 2 * total
        return {**outputs, "loss": outputs["loss"] + term, "ewc_penalty": term.detach()}


@STRATEGIES.register("lwf")
class LwF(Strategy):
    def start(self, model):
        self.teacher: ContinualModel | None = None

    def hooks(self, index, model):
        if index == 0:
            return []
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        earlier = self.stream.experiences[:index]
        if self.stream.scenario == "task":
            targets = {e.head: len(self.stream.heads[e.head].classes) for e in earlier}
        else:  # one shared head: distil the outputs of the classes seen so far
            targets = {"shared": len({c for e in earlier for c in e.classes})}
        lwf = self.config.lwf
        return [Distillation(self.teacher, targets, lwf.alpha, lwf.temperature)]

    def memory_bytes(self):
        return tensor_bytes(self.teacher.parameters()) if self.teacher is not None else 0


class Distillation(Hook):
    """LwF's term: the earlier model's outputs of earlier heads (first ``n`` units each) on the new data are
    soft targets at ``temperature`` (KL, scaled by T^2; independent sigmoids for multi-label heads)."""

    name = "lwf"

    def __init__(self, teacher: ContinualModel, targets: dict[str, int], alpha: float, temperature: float):
        self.teacher, self.targets, self.alpha, self.temperature = teacher, targets, alpha, temperature

    def on_outputs(self, trainer, batch, outputs):
        t = self.temperature
        terms = []
        for part, features in zip(batch["parts"], outputs["features"]):
            with torch.no_grad():
                teacher_features = self.teacher.features(part["inputs"])
            for head, units in self.targets.items():
                student = trainer.model.heads[head](features)[:, :units] / t
                with torch.no_grad():
                    target = self.teacher.heads[head](teacher_features)[:, :units] / t
                if self.teacher.multilabel[head]:
                    terms.append(F.binary_cross_entropy_with_logits(student, torch.sigmoid(target)))
                else:
                    terms.append(
                        F.kl_div(
                            F.log_softmax(student, 1),
                            F.log_softmax(target, 1),
                            log_target=True,
                            reduction="batchmean",
                        )
                    )
        term = self.alpha * t * t * sum(terms) / max(len(terms), 1)
        return {**outputs, "loss": outputs["loss"] + term, "lwf_loss": term.detach()}


def steps_for(examples: int, batch_size: int, epochs: float, max_steps: int) -> int:
    steps = max(1, math.ceil(epochs * examples / batch_size))
    return min(steps, max_steps) if max_steps else steps
