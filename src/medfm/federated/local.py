"""Training on one holder's data and predicting: what a client does in a round, and what the local-only and
centralised baselines do for all their epochs. One loop, so the baselines differ from the federation only
in whose data they see and how often weights are averaged.

FedProx (Li et al. 2020) adds ``mu / 2 * ||w - w_global||^2`` to each client's loss, pulling the local
model towards the round's global weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfm.evaluate.inputs import Split
from medfm.evaluate.metrics import compute_metrics
from medfm.federated.config import LocalTrainingConfig
from medfm.seeding import seeded


def make_optimiser(params, config: LocalTrainingConfig) -> torch.optim.Optimizer:
    if config.optimiser == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def train_task(
    model: nn.Module,
    data: Split,
    config: LocalTrainingConfig,
    *,
    epochs: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> dict[str, float]:
    """Train ``model`` (one task's classifier) on ``data`` for ``epochs``; return mean loss and steps.

    A fresh optimiser each call: optimiser state is not part of what a federation exchanges. Batches and
    any dropout are drawn from ``seed``: the same for the same round and client, whatever ran before in
    the process, and the caller's generators are left as they were.
    """
    with seeded(seed):
        return _train(model, data, config, epochs, seed, proximal_mu)


def _train(
    model: nn.Module, data: Split, config: LocalTrainingConfig, epochs: int, seed: int, proximal_mu: float
) -> dict[str, float]:
    model.train()
    optimiser = make_optimiser([p for p in model.parameters() if p.requires_grad], config)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    generator = torch.Generator().manual_seed(seed)
    count = len(data)
    batch_size = min(config.batch_size, count)
    losses, steps = [], 0
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator)
        # Drop a last batch of one example: BatchNorm cannot train on it.
        for start in range(0, count - (1 if count % batch_size == 1 and count > 1 else 0), batch_size):
            if config.max_steps and steps >= config.max_steps:
                break
            rows = order[start : start + batch_size]
            logits = model({k: v[rows] for k, v in data.inputs.items()})
            loss = F.cross_entropy(logits, data.y[rows])
            if anchor is not None:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + proximal_mu / 2 * drift
            if not torch.isfinite(loss):
                raise FloatingPointError(f"local training loss became {loss.item()} at step {steps}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            losses.append(loss.item())
            steps += 1
    return {"loss": float(np.mean(losses)) if losses else math.nan, "steps": steps}


@torch.no_grad()
def predict(model: nn.Module, data: Split, batch_size: int = 256) -> np.ndarray:
    """Probabilities ``[N, 2]`` of the binary classifier."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        batch = {k: v[start : start + batch_size] for k, v in data.inputs.items()}
        out.append(torch.softmax(model(batch).float(), dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, 2))


def scores(model: nn.Module, data: Split) -> dict[str, float]:
    """AUROC, balanced accuracy and loss of ``model`` on ``data`` (AUROC NaN when one class is absent)."""
    prob = predict(model, data)
    y = data.y.numpy()
    values = compute_metrics(y, prob, False, ("auroc", "balanced_accuracy"))
    loss = (
        float(F.nll_loss(torch.log(torch.as_tensor(prob).clamp_min(1e-12)), data.y)) if len(y) else math.nan
    )
    return {**values, "loss": loss}
