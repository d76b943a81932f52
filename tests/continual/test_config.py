import pytest

from medfm.config import load_config
from medfm.continual.config import STRATEGY_NAMES, ContinualConfig, ExperienceConfig, StrategyConfig
from medfm.continual.strategies import STRATEGIES
from medfm.errors import ConfigError


def stream_config(**overrides) -> ContinualConfig:
    experiences = [ExperienceConfig(task="pneumoniamnist"), ExperienceConfig(task="cinc2017_rhythm")]
    return ContinualConfig(**{"experiences": experiences, **overrides})


def test_every_strategy_name_is_a_registered_plugin():
    assert sorted(STRATEGY_NAMES) == STRATEGIES.list()


def test_a_valid_config_passes_and_labels_default_sensibly():
    config = stream_config(strategies=[StrategyConfig("replay"), StrategyConfig("naive")])
    config.check()
    config.strategies[0].replay.policy = "class_balanced"
    assert config.strategies[0].title == "replay (class-balanced)"
    assert config.folder == "runs/continual/continual"
    assert ExperienceConfig(task="cinc2017_rhythm", classes=["N", "A"]).label == "cinc2017_rhythm[N+A]"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scenario": "online"}, "scenario must be one of"),
        ({"experiences": [ExperienceConfig(task="pneumoniamnist")]}, "at least 2 experiences"),
        ({"metric": "f1"}, "metric must be one of"),
        ({"strategies": [StrategyConfig("gem")]}, "unknown strategy 'gem'"),
        ({"strategies": [StrategyConfig("naive"), StrategyConfig("naive")]}, "distinct labels"),
        ({"scenario": "class"}, "names the classes of every experience"),
        ({"signal_patch": 5000}, "signal_patch"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        stream_config(**overrides).check()


def test_class_incremental_streams_refuse_auroc():
    experiences = [
        ExperienceConfig(task="cinc2017_rhythm", classes=["N", "A"]),
        ExperienceConfig(task="cinc2017_rhythm", classes=["O"]),
    ]
    with pytest.raises(ConfigError, match="accuracy or balanced_accuracy"):
        ContinualConfig(scenario="class", experiences=experiences, metric="auroc").check()


def test_bad_replay_settings_are_refused():
    strategy = StrategyConfig("replay")
    strategy.replay.policy = "fifo"
    with pytest.raises(ConfigError, match=r"replay\.policy"):
        stream_config(strategies=[strategy]).check()
    strategy = StrategyConfig("replay")
    strategy.replay.bytes = "ten megabytes"
    with pytest.raises(ConfigError, match=r"replay\.bytes: cannot read 'ten megabytes' as a size"):
        stream_config(strategies=[strategy]).check()


def test_the_shipped_configs_load_and_pass_their_checks():
    from pathlib import Path

    for path in sorted(Path("configs/continual").glob("*.yaml")):
        load_config(ContinualConfig, path).check()
