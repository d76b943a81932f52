"""Federated task specs (binary outcomes, sites) and the federation config's checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medfm.errors import ConfigError
from medfm.federated.config import AttackConfig, FederateConfig, FedTaskConfig, PrivacyConfig, StrategyConfig
from medfm.federated.tasks import FED_TASKS, icu_type


def task_data(classes, y, groups=None, static=None):
    return SimpleNamespace(
        classes=tuple(classes), y=np.asarray(y), groups=groups or {}, inputs={"static": static or []}
    )


def test_fedmeki_tasks_are_registered_with_their_encoders():
    names = set(FED_TASKS.list())
    assert {
        "pneumonia_xray",
        "ecg_abnormal",
        "ecg_noise",
        "icu_mortality",
        "sepsis",
        "vqa_rad_closed",
    } <= names
    assert {"covid19", "enlarged_cardiomediastinum"} <= names
    assert FED_TASKS.get("ecg_noise").encoder == "ecg_cnn"
    assert FED_TASKS.get("icu_mortality").encoder == "icu_transformer"


def test_binary_labels_map_the_positive_classes():
    data = task_data(("N", "A", "O", "~"), [0, 1, 2, 3, 0])
    assert FED_TASKS.get("ecg_abnormal").binary_labels(data).tolist() == [0, 1, 1, 1, 0]
    assert FED_TASKS.get("ecg_noise").binary_labels(data).tolist() == [0, 0, 0, 1, 0]
    with pytest.raises(ConfigError, match=r"positive class\(es\) \['died'\]"):
        FED_TASKS.get("icu_mortality").binary_labels(data)


def test_sites_come_from_a_metadata_column_or_the_task_rule():
    data = task_data(("survived", "died"), [0, 1], groups={"age_band": np.array(["40-59", "80+"])})
    mortality = FED_TASKS.get("icu_mortality")
    assert mortality.sites(data, "age_band").tolist() == ["40-59", "80+"]
    with pytest.raises(ConfigError, match=r"no metadata column 'hospital'.*age_band"):
        mortality.sites(data, "hospital")
    with pytest.raises(ConfigError, match="no natural sites"):
        FED_TASKS.get("pneumonia_xray").sites(data)


def test_icu_type_sites_and_a_copy_without_the_descriptor():
    static = [np.array([60, 1, 170, code, 80], dtype=np.float32) for code in (1, 3, np.nan)]
    sites = icu_type(task_data(("survived", "died"), [0, 1, 0], static=static))
    assert sites.tolist() == ["Coronary Care Unit", "Medical ICU", "unknown"]
    stripped = [np.array([60, 1, 170, np.nan, 80], dtype=np.float32)] * 2
    with pytest.raises(ConfigError, match=r"carries the ICUType descriptor.*partition\.site: age_band"):
        icu_type(task_data(("survived", "died"), [0, 1], static=stripped))


def test_tasks_without_public_data_ask_for_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="covid19 has no public data: set its root"):
        FED_TASKS.get("covid19").open()


def test_federation_config_refuses_what_cannot_run():
    with pytest.raises(ConfigError, match="not one of"):
        StrategyConfig("fedsgd")
    with pytest.raises(ConfigError, match="did you mean icu_mortality"):
        FedTaskConfig(name="icu_mortaliy")
    with pytest.raises(ConfigError, match="min_clients"):
        FederateConfig(clients=3, min_clients=4)
    with pytest.raises(ConfigError, match="tasks appear twice"):
        FederateConfig(tasks=[FedTaskConfig(), FedTaskConfig()])
    with pytest.raises(ConfigError, match=r"attack\.clients"):
        FederateConfig(clients=3, attack=AttackConfig(kind="noise", clients=[3]))
    with pytest.raises(ConfigError, match=r"noise to a mean of clipped updates.*\['krum'\]"):
        FederateConfig(strategies=[StrategyConfig("krum")], privacy=PrivacyConfig(dp="client_fixed"))
    with pytest.raises(ConfigError, match=r"noise_multiplier must be > 0 with privacy\.dp"):
        PrivacyConfig(dp="server_fixed", noise_multiplier=0.0)
    with pytest.raises(ConfigError, match="distinct label"):
        FederateConfig(strategies=[StrategyConfig("fedprox"), StrategyConfig("fedprox")])
    assert StrategyConfig("fedprox", proximal_mu=0.1).label == "fedprox (mu=0.1)"


def test_an_attack_in_a_private_federation_needs_explicit_consent():
    private, nan = PrivacyConfig(dp="client_fixed"), AttackConfig(kind="nan", clients=[1])
    with pytest.raises(ConfigError, match=r"attack 'nan' with privacy\.dp.*attack\.allow_with_dp: true"):
        FederateConfig(clients=3, privacy=private, attack=nan, strategies=[StrategyConfig("fedavg")])
    allowed = AttackConfig(kind="nan", clients=[1], allow_with_dp=True)
    config = FederateConfig(clients=3, privacy=private, attack=allowed, strategies=[StrategyConfig("fedavg")])
    assert config.attack.allow_with_dp
