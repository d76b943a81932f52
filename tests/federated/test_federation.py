"""Whole federations on real ICU stays (PhysioNet 2012), run in process through the real Flower apps:
prepared files, strategies beside baselines, resume, misbehaving clients and the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from medfm.config import load_config
from medfm.federated.apps import saved_rounds
from medfm.federated.config import AttackConfig, FederateConfig, FedTaskConfig, PrivacyConfig, StrategyConfig
from medfm.federated.data import read_holder
from medfm.federated.job import prepare_run, run_federate, run_strategy
from medfm.federated.partition import PartitionConfig

pytestmark = pytest.mark.slow


def icu_config(tmp: Path, name: str, **settings) -> FederateConfig:
    base = {
        "name": name,
        "output": str(tmp),
        "clients": 3,
        "rounds": 2,
        "runtime": "inprocess",
        "tasks": [FedTaskConfig(name="icu_mortality", limit=600, partition=PartitionConfig(kind="iid"))],
        "strategies": [StrategyConfig("fedavg")],
        "baselines": [],
        "n_boot": 100,
        "workers": 0,
    }
    return FederateConfig(**{**base, **settings})


def rounds_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def test_prepared_files_keep_each_patient_on_one_client(data_root, tmp_path):
    run_dir = prepare_run(icu_config(tmp_path, "prepared"))
    folder = run_dir / "federation"
    clients = [json.loads((folder / f"client_{i}.json").read_text())["subjects"] for i in range(3)]
    held = [{s for subjects in c.values() for s in subjects} for c in clients]
    assert not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    server = json.loads((folder / "server.json").read_text())["subjects"]
    pooled_test = sorted(s for c in clients for s in c["icu_mortality/test"])
    assert sorted(server["icu_mortality/test"]) == pooled_test
    data = read_holder(folder / "client_0.safetensors")["icu_mortality"]
    assert set(data) == {"train", "val", "test"}
    train = data["train"]
    assert train.inputs["series"].shape[1:] == (48, 74) and set(train.y.unique().tolist()) <= {0, 1}
    info = json.loads((folder / "federation.json").read_text())
    assert sum(info["tasks"]["icu_mortality"]["counts"].values()) == 600
    assert (folder / "partition_icu_mortality.png").stat().st_size > 0
    # The saved config reloads as it was: a deployed server reads it.
    assert load_config(FederateConfig, run_dir / "config.yaml").clients == 3


def test_a_federation_beside_its_baselines_writes_the_report_and_resumes(data_root, tmp_path, caplog):
    # Baselines on two worker processes, as by default.
    config = icu_config(tmp_path, "full", baselines=["local", "centralised"], workers=2)
    run_dir = run_federate(config)
    results = pd.read_csv(run_dir / "results.csv")
    assert sorted(results["model"]) == sorted(
        ["fedavg", "centralised", *(f"local-only client {i}" for i in range(3))]
    )
    assert ((results["ci_low"] <= results["auroc"]) & (results["auroc"] <= results["ci_high"])).all()
    assert results.loc[results["model"] == "fedavg", "auroc"].item() > 0.5
    assert len(pd.read_csv(run_dir / "gaps.csv")) == 1
    for name in (
        "federation.md",
        "report.html",
        "figures/rounds_icu_mortality.png",
        "figures/auroc_icu_mortality.png",
    ):
        assert (run_dir / name).stat().st_size > 0
    strategy_dir = run_dir / "strategies" / "fedavg"
    assert saved_rounds(strategy_dir / "rounds") == [0, 1, 2]
    assert [r["round"] for r in rounds_of(strategy_dir)] == [0, 1, 2]
    assert {c["partition-id"] for c in rounds_of(strategy_dir)[-1]["clients"]} == {0, 1, 2}

    # A federation that stopped after round 1 resumes from it and redoes round 2 only.
    (strategy_dir / "done.json").unlink()
    (strategy_dir / "rounds" / "round_2.safetensors").unlink()
    lines = (strategy_dir / "rounds.jsonl").read_text().splitlines()
    (strategy_dir / "rounds.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with caplog.at_level(logging.INFO, logger="medfm"):
        run_strategy(config, config.strategies[0], run_dir)
    assert "resuming fedavg after round 1" in caplog.text
    assert [r["round"] for r in rounds_of(strategy_dir)] == [0, 1, 2]


@pytest.mark.parametrize("kind", ["nan", "shape"])
def test_a_client_sending_a_broken_update_is_rejected_and_the_rounds_go_on(data_root, tmp_path, kind, caplog):
    config = icu_config(tmp_path, kind, attack=AttackConfig(kind=kind, clients=[1]))
    with caplog.at_level(logging.WARNING, logger="medfm"):
        run_dir = run_federate(config)
    rounds = rounds_of(run_dir / "strategies" / "fedavg")
    events = [e for r in rounds for e in r["events"]]
    assert [(e["round"], e["event"], e["client"]) for e in events] == [(1, "rejected", 1), (2, "rejected", 1)]
    reason = "holds NaN or Inf" if kind == "nan" else "has shape"
    assert "rejected the update of client 1" in caplog.text and reason in events[0]["reason"]
    assert np.isfinite(rounds[-1]["test_auroc/icu_mortality"])
    assert "rejected" in (run_dir / "federation.md").read_text()


def test_one_poisoning_client_collapses_fedavg_but_not_robust_strategies(data_root, tmp_path):
    config = icu_config(
        tmp_path,
        "poisoned",
        clients=5,
        rounds=3,
        tasks=[FedTaskConfig(name="icu_mortality", limit=1000, partition=PartitionConfig(kind="iid"))],
        strategies=[StrategyConfig("fedavg"), StrategyConfig("fedmedian"), StrategyConfig("trimmed_mean")],
        attack=AttackConfig(kind="noise", clients=[0], scale=10.0),
    )
    results = pd.read_csv(run_federate(config) / "results.csv").set_index("model")["auroc"]
    assert results["fedavg"] < 0.6
    assert results["fedmedian"] > 0.7 and results["trimmed_mean"] > 0.7


def test_a_task_without_public_data_runs_from_a_users_image_folder(tmp_path, image_folder):
    # The generic layout: images/ and labels.csv with path, label and patient_id columns.
    table = (image_folder / "labels.csv").read_text().replace("path,patient,finding", "path,patient_id,label")
    (image_folder / "labels.csv").write_text(table.replace("effusion", "covid"))
    config = icu_config(
        tmp_path,
        "covid",
        clients=2,
        rounds=1,
        tasks=[FedTaskConfig(name="covid19", root=str(image_folder), encoder="test_vit", image_size=32)],
    )
    results = pd.read_csv(run_federate(config) / "results.csv")
    assert results["task"].tolist() == ["covid19"] and results["auroc"].notna().all()


def test_a_multitask_federation_trains_each_task_on_the_clients_holding_it(data_root, tmp_path):
    config = icu_config(
        tmp_path,
        "multitask",
        tasks=[
            FedTaskConfig(name="icu_mortality", limit=300, partition=PartitionConfig(kind="iid")),
            FedTaskConfig(
                name="ecg_abnormal", limit=300, signal_length=3000, partition=PartitionConfig(kind="iid")
            ),
        ],
    )
    run_dir = run_federate(config)
    results = pd.read_csv(run_dir / "results.csv")
    assert sorted(results["task"]) == ["ecg_abnormal", "icu_mortality"]
    last = rounds_of(run_dir / "strategies" / "fedavg")[-1]
    assert {"test_auroc/icu_mortality", "test_auroc/ecg_abnormal"} <= set(last)
    client = last["clients"][0]
    assert client["num-examples/icu_mortality"] > 0 and client["num-examples/ecg_abnormal"] > 0


def test_secure_aggregation_gives_the_plain_average_up_to_its_quantisation(data_root, tmp_path):
    models = {}
    for name, secagg in (("plain", False), ("secagg", True)):
        config = icu_config(tmp_path, name, rounds=1, privacy=PrivacyConfig(secagg=secagg))
        models[name] = load_file(
            str(run_federate(config) / "strategies" / "fedavg" / "rounds" / "round_1.safetensors")
        )
    initial = load_file(str(tmp_path / "plain" / "strategies" / "fedavg" / "rounds" / "round_0.safetensors"))
    moved = max(float((models["plain"][k] - initial[k]).abs().max()) for k in initial)
    error = max(float((models["plain"][k] - models["secagg"][k]).abs().max()) for k in initial)
    # Training moved the weights; SecAgg+ summed them within a hundredth of that (quantisation).
    assert moved > 1e-3 and error < 0.01 * moved, (moved, error)
