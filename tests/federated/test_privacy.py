"""Differential privacy under dropouts, in process on real ICU stays: a round that loses one of its three
sampled clients' updates (no reply, a failed reply, an update the guard rejects) is refused, keeps the global
model and releases nothing, and the report's epsilon counts only the rounds aggregated with noise."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, Error, Message
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, RdpAccountant, SamplingMethod
from flwr.serverapp import PrivacyConfig as AccountingConfig
from safetensors.torch import load_file

from medfm.federated import runtime
from medfm.federated.config import (
    FederateConfig,
    FedTaskConfig,
    LocalTrainingConfig,
    PrivacyConfig,
    StrategyConfig,
)
from medfm.federated.job import prepare_run, run_strategy
from medfm.federated.partition import PartitionConfig
from medfm.federated.report import write_report

pytestmark = pytest.mark.slow

CLIENTS, LOST_NODE, LOSSY_ROUND = 3, 3, 1


def private_config(output: Path) -> FederateConfig:
    return FederateConfig(
        name="private",
        output=str(output),
        clients=CLIENTS,
        rounds=2,
        runtime="inprocess",
        tasks=[
            FedTaskConfig(
                name="icu_mortality", encoder="icu_gru", limit=150, partition=PartitionConfig(kind="iid")
            )
        ],
        strategies=[StrategyConfig("fedavg")],
        baselines=[],
        training=LocalTrainingConfig(batch_size=16, max_steps=1),
        privacy=PrivacyConfig(dp="client_fixed", noise_multiplier=1.0, clipping_norm=1.0),
        n_boot=50,
        threads=1,
        workers=0,
    )


class LossyGrid(runtime.InProcessGrid):
    """The in-process grid, losing node 3's training update in round 1 as ``loss`` says: ``no reply`` (it
    never arrives), ``failed`` (the SuperLink's error reply for a dead node) or ``rejected`` (NaN weights)."""

    def __init__(self, client_app, clients: int, loss: str):
        super().__init__(client_app, clients)
        self.loss = loss

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        lossy = {
            m.metadata.message_id: m
            for m in messages
            if m.metadata.message_type == "train"
            and m.metadata.dst_node_id == LOST_NODE
            and m.content["config"]["server-round"] == LOSSY_ROUND
        }
        kept = [r for r in replies if r.metadata.reply_to_message_id not in lossy]
        for reply in replies:
            sent = lossy.get(reply.metadata.reply_to_message_id)
            if sent is None or self.loss == "no reply":
                continue
            if self.loss == "failed":
                kept.append(Message(Error(code=5, reason="Node Unavailable"), reply_to=sent))
            else:
                arrays = reply.content["arrays"]
                reply.content["arrays"] = ArrayRecord(
                    {k: Array(np.full(a.shape, np.nan, dtype=np.float32)) for k, a in arrays.items()}
                )
                kept.append(reply)
        return kept


@pytest.fixture(scope="module")
def prepared(data_root, tmp_path_factory) -> Path:
    return prepare_run(private_config(tmp_path_factory.mktemp("prepared")))


def run_folder(prepared: Path, run_dir: Path) -> Path:
    """A run folder of its own over the shared prepared files."""
    run_dir.mkdir()
    shutil.copy(prepared / "config.yaml", run_dir / "config.yaml")
    (run_dir / "federation").symlink_to(prepared / "federation")
    return run_dir


def epsilon_of(releases: int, config: FederateConfig) -> float:
    """Flower's RDP epsilon for ``releases`` Gaussian releases at the configured noise multiplier."""
    accountant = RdpAccountant(
        AccountingConfig(
            target_delta=config.privacy.delta,
            population_size=CLIENTS,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    if releases:
        event = GaussianPrivacyEvent(config.privacy.noise_multiplier, CLIENTS, CLIENTS)
        accountant.compose(event, count=releases)
    return accountant.get_privacy_spent().epsilon


@pytest.mark.parametrize("loss", ["no reply", "failed", "rejected"])
def test_a_private_round_losing_a_sampled_update_is_refused_and_not_accounted(
    prepared, tmp_path, monkeypatch, loss
):
    run_dir = run_folder(prepared, tmp_path / "run")
    config = private_config(tmp_path)
    monkeypatch.setattr(runtime, "InProcessGrid", lambda app, clients: LossyGrid(app, clients, loss))

    timing = run_strategy(config, config.strategies[0], run_dir)

    output = run_dir / "strategies" / "fedavg"
    rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
    events = [
        (e["round"], e["event"]) for r in rounds for e in r["events"] if e["event"] != "evaluation failed"
    ]
    assert events == [(1, loss), (1, "refused")]
    refused = next(e for e in rounds[1]["events"] if e["event"] == "refused")
    assert "all 3 sampled clients, 2 were valid" in refused["reason"]
    # The refused round kept the initial model (no noise added); round 2 aggregated all three with noise.
    models = [load_file(str(output / "rounds" / f"round_{k}.safetensors")) for k in range(3)]
    assert all(np.array_equal(models[0][key], models[1][key]) for key in models[0])
    assert not all(np.array_equal(models[1][key], models[2][key]) for key in models[1])

    summary = write_report(config, run_dir, [timing], [])
    assert [r.get("dp_releases") for r in rounds] == [0, 0, 1]
    (privacy,) = summary["privacy"]
    assert (privacy["released_rounds"], privacy["refused_rounds"]) == (1, 1)
    assert privacy["epsilon"] == pytest.approx(epsilon_of(1, config))
    assert privacy["epsilon"] < epsilon_of(config.rounds, config)
    table = pd.read_csv(run_dir / "events.csv")
    assert "refused" in set(table["event"]) and "refused" in (run_dir / "federation.md").read_text()


def test_a_resumed_private_federation_counts_the_releases_made_before_it_stopped(prepared, tmp_path):
    run_dir = run_folder(prepared, tmp_path / "run")
    config = private_config(tmp_path)
    output = run_dir / "strategies" / "fedavg"
    run_strategy(config, config.strategies[0], run_dir)
    # Stopped after round 1: round 2 is redone from round 1's model and its one release.
    (output / "done.json").unlink()
    (output / "rounds" / "round_2.safetensors").unlink()
    lines = (output / "rounds.jsonl").read_text().splitlines()
    (output / "rounds.jsonl").write_text("\n".join(lines[:2]) + "\n")
    timing = run_strategy(config, config.strategies[0], run_dir)
    rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["dp_releases"]) for r in rounds] == [(0, 0), (1, 1), (2, 2)]
    (privacy,) = write_report(config, run_dir, [timing], [])["privacy"]
    assert privacy["released_rounds"] == 2 and privacy["epsilon"] == pytest.approx(epsilon_of(2, config))
