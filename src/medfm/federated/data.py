"""Preparing a federation's data: each task read once, relabelled, partitioned by subject, turned into model
inputs, and written as one file per client (what that hospital holds) and one for the server.

The files are safetensors (no pickle) beside a JSON sidecar of subjects and names:

* ``client_<i>.safetensors``: ``<task>/<split>/<input>`` and ``<task>/<split>/y`` for the client's own
  train, val and test examples of every task it holds; a client holds a task when it has training examples.
* ``server.safetensors``: the pooled val and test splits of every task, on which the server picks the best
  round (val) and reports the federation (test). Test intervals resample ``server.json``'s subjects.
* ``federation.json``: tasks (classes, model spec, partition), clients (names, counts).

Inputs are stored after the model's preprocessing (:mod:`medfm.evaluate.backbones`): images resized and
normalised, ECGs standardised and cropped, ICU series standardised, carried forward and masked. The ICU
scaling is fitted on the pooled training split: the per-variable counts, sums and sums of squares it needs
are what one federated round of sums would give exactly (no example leaves a client for it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medfm.errors import ConfigError, DataError
from medfm.evaluate.backbones import Backbone
from medfm.evaluate.encoders import build_backbone, resolve_encoder
from medfm.evaluate.inputs import Split, model_inputs
from medfm.evaluate.tasks import TaskData
from medfm.evaluate.timeseries_backbones import SeriesBackbone, SignalBackbone
from medfm.federated.config import FederateConfig, FedTaskConfig
from medfm.federated.partition import Partition, partition_examples, partition_table, plot_partition
from medfm.federated.tasks import FED_TASKS, FedTask
from medfm.log import get_logger
from medfm.models.encoders import create_encoder

log = get_logger("federated.data")

SPLITS = ("train", "val", "test")


def task_backbone(spec: FedTask, task: FedTaskConfig, data: TaskData) -> tuple[Backbone, dict[str, Any]]:
    """The preprocessing backbone of a task's inputs and the model spec clients rebuild the model from."""
    encoder = task.encoder or spec.encoder
    kind = data.info.kind
    if kind in ("image", "vqa"):
        source = resolve_encoder(encoder)
        backbone = build_backbone(
            source, data, pretrained=source.path is not None, image_size=task.image_size
        )
        model = {
            "kind": kind,
            "encoder": str(source.path) if source.path is not None else source.name,
            "in_chans": source.in_chans,
            "image_size": task.image_size,
            "mean": source.mean,
            "std": source.std,
        }
        return backbone, model
    if kind == "series":
        features = int(np.asarray(data.inputs["series"][0]).shape[1])
        backbone = SeriesBackbone(create_encoder(encoder, in_features=features))
        backbone.fit(
            {k: [v[i] for i in np.flatnonzero(data.split == "train")] for k, v in data.inputs.items()}
        )
        return backbone, {"kind": kind, "encoder": encoder, "in_features": features}
    if kind == "signal":
        leads = int(np.asarray(data.inputs["signal"][0]).shape[0])
        backbone = SignalBackbone(create_encoder(encoder, in_chans=leads), length=task.signal_length)
        return backbone, {"kind": kind, "encoder": encoder, "in_chans": leads}
    raise ConfigError(f"federated task {spec.name}: {kind} inputs are not supported")


def load_task(task: FedTaskConfig) -> tuple[FedTask, TaskData, np.ndarray]:
    spec = FED_TASKS.get(task.name)
    data = spec.open(task.root, task.limit).load()
    return spec, data, spec.binary_labels(data)


def split_partition(
    spec: FedTask, task: FedTaskConfig, data: TaskData, y: np.ndarray, clients: int
) -> Partition:
    """The task's examples dealt to ``clients`` clients by subject (see :mod:`medfm.federated.partition`)."""
    # Natural sites are split (the largest first) or merged (the smallest first) to make ``clients``.
    config = replace(task.partition, clients=clients)
    sites = spec.sites(data, config.site) if config.kind == "natural" else None
    partition = partition_examples(data.subjects, y, config, sites)
    if len(partition.names) != clients:
        raise ConfigError(
            f"task {spec.name}: the {config.kind} partition gives {len(partition.names)} clients "
            f"({partition.names}) but the federation has {clients}"
        )
    return partition


def prepare_federation(config: FederateConfig, folder: Path) -> dict[str, Any]:
    """Write the client and server files of ``config`` under ``folder``; return ``federation.json``'s dict."""
    folder.mkdir(parents=True, exist_ok=True)
    clients: list[dict[str, torch.Tensor]] = [{} for _ in range(config.clients)]
    client_subjects: list[dict[str, list[str]]] = [{} for _ in range(config.clients)]
    server: dict[str, torch.Tensor] = {}
    server_subjects: dict[str, list[str]] = {}
    tasks: dict[str, Any] = {}
    names: list[str] = []
    for task in config.tasks:
        spec, data, y = load_task(task)
        partition = split_partition(spec, task, data, y, config.clients)
        names = names or partition.names
        backbone, model = task_backbone(spec, task, data)
        inputs = model_inputs(backbone, data, f"preparing {spec.name}")
        labels = torch.as_tensor(y)
        for client in range(config.clients):
            for split in SPLITS:
                rows = np.flatnonzero((partition.client == client) & (data.split == split))
                add_split(
                    clients[client],
                    client_subjects[client],
                    f"{spec.name}/{split}",
                    inputs,
                    labels,
                    data,
                    rows,
                )
        for split in ("val", "test"):
            add_split(
                server,
                server_subjects,
                f"{spec.name}/{split}",
                inputs,
                labels,
                data,
                np.flatnonzero(data.split == split),
            )
        table = partition_table(partition, y, spec.classes, split=data.split, subjects=data.subjects)
        table.to_csv(folder / f"partition_{spec.name}.csv", index=False)
        plot_partition(
            table,
            spec.classes,
            folder / f"partition_{spec.name}.png",
            title=f"{spec.name}: {task.partition.kind}",
        )
        tasks[spec.name] = {
            "description": spec.description,
            "classes": list(spec.classes),
            "model": model,
            "partition": {"kind": task.partition.kind, "clients": partition.names},
            "counts": {split: int((data.split == split).sum()) for split in SPLITS},
            "positives": {split: int(y[data.split == split].sum()) for split in SPLITS},
            "train_per_client": [
                int(((partition.client == c) & (data.split == "train")).sum()) for c in range(config.clients)
            ],
        }
    for client in range(config.clients):
        save_file(clients[client], str(folder / f"client_{client}.safetensors"))
        (folder / f"client_{client}.json").write_text(
            json.dumps({"name": names[client], "subjects": client_subjects[client]})
        )
    save_file(server, str(folder / "server.safetensors"))
    (folder / "server.json").write_text(json.dumps({"subjects": server_subjects}))
    info = {"tasks": tasks, "clients": names}
    (folder / "federation.json").write_text(json.dumps(info, indent=2))
    return info


def add_split(
    store: dict[str, torch.Tensor],
    subjects: dict[str, list[str]],
    prefix: str,
    inputs: dict[str, torch.Tensor],
    y: torch.Tensor,
    data: TaskData,
    rows: np.ndarray,
) -> None:
    index = torch.as_tensor(rows, dtype=torch.long)
    for key, value in inputs.items():
        store[f"{prefix}/{key}"] = value[index].contiguous()
    store[f"{prefix}/y"] = y[index].contiguous()
    subjects[prefix] = [str(s) for s in data.subjects[rows]]


def read_holder(path: Path) -> dict[str, dict[str, Split]]:
    """A client's or the server's file as ``{task: {split: Split}}`` (empty splits left out)."""
    if not path.is_file():
        raise DataError(f"federated data file not found: {path}")
    tensors = load_file(str(path))
    sidecar = json.loads(path.with_suffix(".json").read_text())["subjects"]
    held: dict[str, dict[str, Split]] = {}
    for prefix in sidecar:
        y = tensors[f"{prefix}/y"]
        if len(y) == 0:
            continue
        task, split = prefix.rsplit("/", 1)
        inputs = {
            key.removeprefix(prefix + "/"): value
            for key, value in tensors.items()
            if key.startswith(prefix + "/")
        }
        inputs.pop("y")
        held.setdefault(task, {})[split] = Split(inputs, y, np.array(sidecar[prefix], dtype=object))
    return held


def read_federation(folder: Path) -> dict[str, Any]:
    path = folder / "federation.json"
    if not path.is_file():
        raise DataError(f"{folder} holds no prepared federation (federation.json is missing)")
    return json.loads(path.read_text())
