"""The baselines a federation is judged against, trained with the clients' own loop (:mod:`.local`) for as
many epochs as a client trains over the whole federation (``rounds x local epochs``):

* **local-only**: each client trains alone on its own training examples and keeps the epoch with the best
  AUROC on its own validation examples (the last epoch when they hold one class or none);
* **centralised**: one model on the pooled training examples of every client (the upper bound a
  federation approaches), keeping the epoch with the best AUROC on the pooled validation split.

Both are scored on the server's pooled test split, like the federated models.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from medfm.federated.config import FederateConfig
from medfm.federated.data import Split, read_federation, read_holder
from medfm.federated.local import predict, scores, train_task
from medfm.federated.model import build_model
from medfm.log import get_logger, progress

log = get_logger("federated.baselines")


def pooled(parts: list[Split]) -> Split:
    return Split(
        {k: torch.cat([p.inputs[k] for p in parts]) for k in parts[0].inputs},
        torch.cat([p.y for p in parts]),
        np.concatenate([p.subjects for p in parts]),
    )


def train_with_selection(
    model: torch.nn.Module, train: Split, val: Split | None, config: FederateConfig, seed: int
) -> dict:
    """Train epoch by epoch, keeping the weights of the epoch with the best validation AUROC."""
    epochs = config.rounds * config.training.epochs
    best, best_state, best_epoch = -math.inf, None, epochs
    for epoch in range(epochs):
        train_task(model, train, config.training, epochs=1, seed=seed + epoch)
        if val is None:
            continue
        auroc = scores(model, val)["auroc"]
        if np.isfinite(auroc) and auroc > best:
            best, best_state, best_epoch = auroc, copy.deepcopy(model.state_dict()), epoch + 1
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "val_auroc": best if best_state is not None else math.nan}


def run_baselines(config: FederateConfig, federation_dir: Path, output: Path) -> list[dict]:
    """Train the configured baselines; write each model's test predictions; return one record per model."""
    info = read_federation(federation_dir)
    server = read_holder(federation_dir / "server.safetensors")
    clients = [read_holder(federation_dir / f"client_{i}.safetensors") for i in range(config.clients)]
    records = []
    for task in info["tasks"]:
        test = server[task]["test"]
        jobs: list[tuple[str, int | None]] = []
        if "local" in config.baselines:
            jobs += [("local", c) for c in range(config.clients) if "train" in clients[c].get(task, {})]
        if "centralised" in config.baselines:
            jobs.append(("centralised", None))
        for method, client in progress(jobs, f"baselines of {task}", unit="models"):
            model = build_model({task: info["tasks"][task]}, config.seed)[task]
            if method == "local":
                train, val = clients[client][task]["train"], clients[client][task].get("val")
                if val is not None and len(np.unique(val.y.numpy())) < 2:
                    val = None
            else:
                train = pooled([c[task]["train"] for c in clients if "train" in c.get(task, {})])
                val = server[task].get("val")
            selection = train_with_selection(model, train, val, config, seed=config.seed)
            name = "centralised" if client is None else f"local_{client}"
            folder = output / name
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(
                folder / f"test_{task}.npz",
                y=test.y.numpy(),
                prob=predict(model, test),
                subjects=test.subjects.astype(str),
            )
            records.append(
                {
                    "method": method,
                    "model": name,
                    "task": task,
                    "client": client,
                    "train_examples": len(train),
                    **selection,
                }
            )
            log.info("%s %s: best epoch %d", task, name, selection["best_epoch"])
    return records
