"""Full fine-tuning with layer-wise learning-rate decay (BEiT, MAE): a linear head on the backbone, every
weight trained, layer ``i`` of ``L`` at ``lr * decay ** (L - i)`` so early layers move least.

The same loop trains the from-scratch baselines (a randomly initialised encoder or ResNet-18), whose
backbones put every weight in one layer (no decay). The model of the step with the lowest validation
loss is kept; without a validation split, the last one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medfm.engine.schedules import cosine_schedule
from medfm.evaluate.backbones import Backbone
from medfm.evaluate.protocols.linear_probe import probabilities, probe_loss, targets
from medfm.log import get_logger, progress
from medfm.seeding import seeded

log = get_logger("evaluate.finetune")


@dataclass
class FinetuneConfig:
    epochs: int = 10
    max_steps: int = 0  # cap on optimiser steps (0: none), so CPU budgets stay predictable
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 1e-6
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    evaluations: int = 2  # validation checks over the run, for model selection (0: keep the last step)


class Classifier(nn.Module):
    def __init__(self, backbone: Backbone, outputs: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, outputs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.backbone(batch))


def layer_decay_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with an ``lr_scale`` per layer; biases, norms and tokens get no weight decay."""
    last = model.backbone.num_layers
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = (
            model.backbone.layer_id(name.removeprefix("backbone.")) if name.startswith("backbone.") else last
        )
        decay = param.ndim > 1 and not name.endswith(("cls_token", "pos_embed", "reg_token"))
        group = groups.setdefault(
            (layer, decay),
            {"params": [], "lr_scale": layer_decay ** (last - layer), "weight_decay": weight_decay * decay},
        )
        group["params"].append(param)
    return list(groups.values())


def _batches(count: int, batch_size: int, generator: torch.Generator):
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1 if count >= batch_size else 1, batch_size):
            yield order[start : start + batch_size].tolist()


@torch.no_grad()
def _evaluate(model, inputs, y, multilabel, device, batch_size) -> tuple[np.ndarray, float]:
    model.eval()
    count = len(next(iter(inputs.values())))
    logits = []
    for start in range(0, count, batch_size):
        batch = model.backbone.collate(inputs, range(start, min(start + batch_size, count)))
        with _autocast(device):
            logits.append(model({k: v.to(device) for k, v in batch.items()}).float().cpu())
    logits = torch.cat(logits)
    loss = float(probe_loss(logits, targets(y, multilabel), multilabel)) if y is not None else float("nan")
    return probabilities(logits, multilabel), loss


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def finetune(
    backbone: Backbone,
    train: tuple[dict[str, list], np.ndarray],
    val: tuple[dict[str, list], np.ndarray],
    test_inputs: dict[str, list],
    outputs: int,
    multilabel: bool,
    config: FinetuneConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    description: str = "fine-tune",
) -> tuple[np.ndarray, dict[str, float]]:
    """Train a copy of ``backbone`` with a linear head; return test probabilities and a summary.

    The head's initialisation and any dropout draw from torch's generators seeded with ``seed``; the
    caller's generator states are restored afterwards."""
    with seeded(seed):
        return _train(
            backbone, train, val, test_inputs, outputs, multilabel, config, device, seed, description
        )


def _train(
    backbone: Backbone,
    train: tuple[dict[str, list], np.ndarray],
    val: tuple[dict[str, list], np.ndarray],
    test_inputs: dict[str, list],
    outputs: int,
    multilabel: bool,
    config: FinetuneConfig,
    device: torch.device | str,
    seed: int,
    description: str,
) -> tuple[np.ndarray, dict[str, float]]:
    device = torch.device(device)
    model = Classifier(copy.deepcopy(backbone), outputs).to(device)
    groups = layer_decay_groups(model, config.weight_decay, config.layer_decay)
    optimiser = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999))
    train_inputs, train_y = train
    count = len(train_y)
    batch_size = min(config.batch_size, count)
    steps = config.epochs * max(1, count // batch_size)
    if config.max_steps:
        steps = min(steps, config.max_steps)
    warmup = int(config.warmup_fraction * steps)
    checks = {math.ceil(steps * (i + 1) / config.evaluations) for i in range(config.evaluations)}
    has_val = len(val[1]) > 0 and config.evaluations > 0
    best_loss, best_state, best_step = math.inf, None, steps
    batches = _batches(count, batch_size, torch.Generator().manual_seed(seed))
    train_targets = targets(train_y, multilabel)
    for step in progress(range(steps), description, unit="img", scale=batch_size):
        model.train()
        lr = cosine_schedule(step, steps, config.lr, config.min_lr, warmup)
        for group in optimiser.param_groups:
            group["lr"] = lr * group["lr_scale"]
        index = next(batches)
        batch = model.backbone.collate(train_inputs, index)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(device):
            logits = model(batch).float()
        loss = probe_loss(logits, train_targets[index].to(device), multilabel)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{description}: loss became {loss.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if has_val and step + 1 in checks:
            _, val_loss = _evaluate(model, val[0], val[1], multilabel, device, 2 * batch_size)
            if val_loss < best_loss:
                best_loss, best_step = val_loss, step + 1
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    prob, _ = _evaluate(model, test_inputs, None, multilabel, device, 2 * batch_size)
    return prob, {"steps": steps, "best_step": best_step, "val_loss": best_loss if has_val else float("nan")}
