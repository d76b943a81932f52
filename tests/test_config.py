from dataclasses import dataclass, field

import pytest
import yaml

from medfm.config import config_to_dict, load_config, save_config
from medfm.errors import ConfigError


@dataclass
class Inner:
    name: str = "x"
    options: dict = field(default_factory=dict)


@dataclass
class Outer:
    size: int = 224
    rate: float = 0.5
    items: list[Inner] = field(default_factory=list)
    splits: dict[str, float] = field(default_factory=lambda: {"train": 1.0})


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("size: 64\nitems:\n  - name: a\n    options: {k: 1}\n")
    config = load_config(Outer, path, ["rate=0.25", "size=32"])
    assert isinstance(config, Outer) and isinstance(config.items[0], Inner)
    assert (config.size, config.rate, config.items[0].options) == (32, 0.25, {"k": 1})


def test_round_trip_through_yaml(tmp_path):
    config = load_config(Outer, None, ["size=16"])
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == config
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text()) == config_to_dict(config)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("size: big\n", [], "size"),
        ("sise: 3\n", [], "sise"),
        ("- 1\n", [], "mapping"),
        ("size: [\n", [], "not valid YAML"),
        ("", ["size"], "key=value"),
        ("", ["nope=1"], "nope"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, path, overrides)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "absent.yaml")
