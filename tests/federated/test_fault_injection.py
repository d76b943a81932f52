"""Fault injection is for medfm's own runtimes only: a deployed ClientApp answers a server's attack request
with its honest update, the in-process runtime's ClientApp corrupts it, and a deployment cannot be prepared
with an attack setting."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from medfm.errors import ConfigError
from medfm.federated import apps
from medfm.federated.config import (
    AttackConfig,
    FederateConfig,
    FedTaskConfig,
    LocalTrainingConfig,
    StrategyConfig,
)
from medfm.federated.data import read_federation
from medfm.federated.job import prepare_run
from medfm.federated.model import build_model, to_arrays
from medfm.federated.partition import PartitionConfig
from medfm.federated.runtime import RUN_ID, InProcessGrid

CLIENTS, ATTACKER = 3, 1


def federation_config(output: Path, **settings) -> FederateConfig:
    task = FedTaskConfig(
        name="icu_mortality", encoder="icu_gru", limit=90, partition=PartitionConfig(kind="iid")
    )
    base = {
        "name": "faults",
        "output": str(output),
        "clients": CLIENTS,
        "rounds": 1,
        "runtime": "inprocess",
        "tasks": [task],
        "strategies": [StrategyConfig("fedavg")],
        "baselines": [],
        "workers": 0,
    }
    return FederateConfig(**{**base, **settings})


@pytest.fixture(scope="module")
def federation(data_root, tmp_path_factory) -> Path:
    return prepare_run(federation_config(tmp_path_factory.mktemp("faults"))) / "federation"


def nan_request(grid: InProcessGrid, federation: Path) -> Message:
    """Round 1's train message asking client ``ATTACKER`` for a NaN update."""
    tasks = read_federation(federation)["tasks"]
    config = ConfigRecord(
        {
            "model-spec": json.dumps(tasks),
            "training": json.dumps(asdict(LocalTrainingConfig(batch_size=16, max_steps=1))),
            "attack": json.dumps(asdict(AttackConfig(kind="nan", clients=[ATTACKER]))),
            "server-round": 1,
        }
    )
    content = RecordDict({"arrays": to_arrays(build_model(tasks)), "config": config})
    return grid.create_message(content, MessageType.TRAIN, dst_node_id=ATTACKER + 1, group_id="1")


def update_of(grid: InProcessGrid, message: Message) -> list[np.ndarray]:
    (reply,) = grid.send_and_receive([message])
    return reply.content["arrays"].to_numpy_ndarrays()


def test_a_deployed_client_ignores_the_servers_attack_request(federation, caplog):
    grid = InProcessGrid(apps.client_app, CLIENTS)  # the ClientApp deploy/pyproject.toml names
    node = ATTACKER + 1
    # The node's context as a SuperNode started with --node-config "partition-id=1 data-path='...'" has it.
    grid.nodes[node] = Context(
        run_id=RUN_ID,
        node_id=node,
        node_config={
            "partition-id": ATTACKER,
            "data-path": str(federation / f"client_{ATTACKER}.safetensors"),
        },
        state=RecordDict(),
        run_config={},
    )
    with caplog.at_level(logging.WARNING, logger="medfm"):
        update = update_of(grid, nan_request(grid, federation))
    assert all(np.isfinite(array).all() for array in update)
    assert f"client {ATTACKER}: ignored the server's request for a 'nan' attack" in caplog.text


def test_the_in_process_runtimes_client_injects_the_requested_fault(federation):
    grid = InProcessGrid(apps.make_client_app(str(federation), inject_faults=True), CLIENTS)
    update = update_of(grid, nan_request(grid, federation))
    assert all(np.isnan(array).all() for array in update)


def test_a_deployment_is_not_prepared_with_an_attack(tmp_path):
    config = federation_config(tmp_path, attack=AttackConfig(kind="noise", clients=[0]))
    with pytest.raises(ConfigError, match="attack 'noise' runs only in medfm's simulation and in-process"):
        prepare_run(config)
    assert not (tmp_path / "faults").exists()
