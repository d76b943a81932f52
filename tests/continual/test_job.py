"""`medfm continual` end to end on real data (small limits): stream, strategies, report, resumption."""

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from medfm.cli import app

runner = CliRunner()


def write_config(tmp_path, **overrides):
    config = {
        "name": "tiny",
        "output": str(tmp_path / "run"),
        "scenario": "task",
        "encoder": "test_vit",
        "signal_length": 1000,
        "signal_patch": 50,
        "experiences": [
            {"task": "pneumoniamnist"},
            {"task": "cinc2017_rhythm", "limit": 150},
            {"task": "physionet2012_mortality", "limit": 300},
        ],
        "strategies": [{"name": "naive"}, {"name": "joint"}, {"name": "replay"}],
        "train": {"epochs": 1, "max_steps": 3, "batch_size": 16},
        "bootstrap": 20,
        "workers": 0,
        **overrides,
    }
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_continual_runs_a_real_stream_and_resumes(data_root, tmp_path):
    config = write_config(tmp_path)
    result = runner.invoke(app, ["continual", "--config", str(config)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for name in (
        "continual.md",
        "results.csv",
        "summary.csv",
        "comparisons.csv",
        "curves.png",
        "summary.png",
        "matrix_replay.png",
        "config.yaml",
        "provenance.json",
        "stream/stream.safetensors",
    ):
        assert (run / name).is_file(), name
    summary = pd.read_csv(run / "summary.csv").set_index("strategy")
    assert list(summary.index) == ["naive", "joint", "replay"]
    assert summary.loc["replay", "memory_mb"] > 0 and summary.loc["naive", "memory_mb"] == 0
    assert summary.loc["naive", "acc_low"] <= summary.loc["naive", "acc"] <= summary.loc["naive", "acc_high"]
    results = pd.read_csv(run / "results.csv")
    assert set(results["split"]) == {"val", "test"} and len(results) == 3 * 2 * (9 + 3)
    document = (run / "continual.md").read_text()
    assert "## Against naive fine-tuning and joint training" in document and "### replay" in document

    stamp = (run / "strategies" / "naive" / "result.json").stat().st_mtime_ns
    config = write_config(
        tmp_path,
        strategies=[{"name": "naive"}, {"name": "joint"}, {"name": "replay", "replay": {"fraction": 0.1}}],
    )
    again = runner.invoke(app, ["continual", "--config", str(config)])
    assert again.exit_code == 0, again.output
    assert (run / "strategies" / "naive" / "result.json").stat().st_mtime_ns == stamp  # reused
    replay = json.loads((run / "strategies" / "replay" / "result.json").read_text())
    assert replay["memory_bytes"][-1] > 0


def test_a_bad_stream_fails_with_one_line(data_root, tmp_path):
    config = write_config(tmp_path, scenario="domain")
    result = runner.invoke(app, ["continual", "--config", str(config)])
    assert result.exit_code == 2
    assert "a domain-incremental stream shares one head" in " ".join(result.output.split())


def test_a_failing_strategy_is_reported_and_the_others_kept(data_root, tmp_path, monkeypatch):
    from medfm.config import load_config
    from medfm.continual import job
    from medfm.continual.config import ContinualConfig
    from medfm.errors import MedfmError

    real = job.learn

    def joint_breaks(config_path, index, *args):
        if index == 1:
            raise RuntimeError("out of memory on the joint step")
        return real(config_path, index, *args)

    monkeypatch.setattr(job, "learn", joint_breaks)
    config = load_config(ContinualConfig, write_config(tmp_path))
    with pytest.raises(MedfmError, match=r"1 strategy failed \(joint\)"):
        job.run_continual(config)
    run = tmp_path / "run"
    assert "out of memory on the joint step" in (run / "failures.json").read_text()
    assert list(pd.read_csv(run / "summary.csv")["strategy"]) == ["naive", "replay"]
    assert "## Failed strategies" in (run / "continual.md").read_text()
