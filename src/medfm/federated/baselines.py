"""The baselines a federation is judged against, trained with the clients' own loop (:mod:`.local`) for as
many epochs as a client trains over the whole federation (``rounds x local epochs``):

* **local-only**: each client trains alone on its own training examples and keeps the epoch with the best
  AUROC on its own validation examples (the last epoch when they hold one class or none);
* **centralised**: one model on the pooled training examples of every client (the upper bound a
  federation approaches), keeping the epoch with the best AUROC on the pooled validation split.

Both are scored on the server's pooled test split, like the federated models. The models train side by
side in worker processes (``workers``), the largest first.
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
import torch

from medfm.evaluate.inputs import Split
from medfm.executors import make_executor, one_thread
from medfm.federated.config import FederateConfig
from medfm.federated.data import read_federation, read_holder
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


def train_baseline(
    config: FederateConfig, federation_dir: Path, output: Path, task: str, client: int | None
) -> dict:
    """One baseline model (``client`` None: centralised); writes its test predictions, returns its record."""
    info = read_federation(federation_dir)
    server = read_holder(federation_dir / "server.safetensors")[task]
    model = build_model({task: info["tasks"][task]}, config.seed)[task]
    if client is None:
        holders = [read_holder(federation_dir / f"client_{i}.safetensors") for i in range(config.clients)]
        train = pooled([h[task]["train"] for h in holders if "train" in h.get(task, {})])
        val = server.get("val")
    else:
        own = read_holder(federation_dir / f"client_{client}.safetensors")[task]
        train, val = own["train"], own.get("val")
        if val is not None and len(np.unique(val.y.numpy())) < 2:
            val = None
    selection = train_with_selection(model, train, val, config, seed=config.seed)
    name = "centralised" if client is None else f"local_{client}"
    folder = output / name
    folder.mkdir(parents=True, exist_ok=True)
    test = server["test"]
    np.savez(
        folder / f"test_{task}.npz",
        y=test.y.numpy(),
        prob=predict(model, test),
        subjects=test.subjects.astype(str),
    )
    method = "centralised" if client is None else "local"
    return {
        "method": method,
        "model": name,
        "task": task,
        "client": client,
        "train_examples": len(train),
        **selection,
    }


def run_baselines(config: FederateConfig, federation_dir: Path, output: Path) -> list[dict]:
    """Train the configured baselines, largest first, on ``config.workers`` processes of one thread each
    (0: in this process); return one record per model."""
    info = read_federation(federation_dir)
    jobs: list[tuple[int, str, int | None]] = []
    for task, spec in info["tasks"].items():
        sizes = spec["train_per_client"]
        if "centralised" in config.baselines:
            jobs.append((sum(sizes), task, None))
        if "local" in config.baselines:
            jobs += [(size, task, c) for c, size in enumerate(sizes) if size]
    jobs.sort(key=lambda job: -job[0])
    with make_executor(config.workers, one_thread if config.workers else None) as executor:
        futures = [
            executor.submit(train_baseline, config, federation_dir, output, task, c) for _, task, c in jobs
        ]
        records = []
        for future in progress(as_completed(futures), "baselines", total=len(futures), unit="models"):
            records.append(future.result())
            record = records[-1]
            log.info(
                "baseline %s of %s: best epoch %d", record["model"], record["task"], record["best_epoch"]
            )
    return sorted(
        records, key=lambda r: (r["task"], r["method"], r["client"] if r["client"] is not None else -1)
    )
