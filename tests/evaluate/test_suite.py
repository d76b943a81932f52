"""The evaluation suite end to end, on a folder of images built by the test and a tiny bundle."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from medfm.cli import app
from medfm.errors import ConfigError
from medfm.evaluate.predictions import RESULT_COLUMNS, Predictions
from medfm.evaluate.protocols.fewshot import FewShotConfig
from medfm.evaluate.protocols.finetune import FinetuneConfig
from medfm.evaluate.suite import EvalConfig, run_eval
from medfm.models.bundle import save_bundle
from medfm.models.encoders import create_encoder


@pytest.fixture
def bundle(tmp_path):
    encoder = create_encoder("test_vit", in_chans=1, img_size=32)
    config = {"encoder": {"name": "test_vit", "in_chans": 1, "img_size": 32}}
    return save_bundle(tmp_path / "tiny-mae" / "bundle", encoder.state_dict(), config)


def folder_config(tmp_path, folder, bundle, **extra) -> EvalConfig:
    return EvalConfig(
        output=str(tmp_path / "eval"),
        encoder=str(bundle),
        tasks=["image_folder"],
        task_options={
            "image_folder": {"root": str(folder), "label_column": "finding", "id_column": "patient"}
        },
        n_boot=50,
        fewshot=FewShotConfig(shots=[1, 5], draws=2),
        finetune=FinetuneConfig(max_steps=3, batch_size=8),
        scratch=FinetuneConfig(max_steps=3, batch_size=8),
        **extra,
    )


def test_suite_runs_every_protocol_and_baseline_and_writes_the_report(tmp_path, image_folder, bundle):
    paths = run_eval(folder_config(tmp_path, image_folder, bundle))
    out = tmp_path / "eval"
    rows = pd.read_csv(out / "results.csv")
    assert list(rows.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    runs = set(zip(rows.model, rows.protocol))
    assert runs == {
        ("tiny-mae", "linear_probe"),
        ("tiny-mae", "knn"),
        ("tiny-mae", "fewshot"),
        ("tiny-mae", "finetune"),
        ("test_vit (random init)", "linear_probe"),
        ("test_vit (random init)", "knn"),
        ("test_vit (random init)", "fewshot"),
        ("resnet18 (scratch)", "finetune"),
        ("pixels_logreg", "classical"),
    }
    probe = rows[(rows.model == "tiny-mae") & (rows.protocol == "linear_probe") & (rows.metric == "auroc")]
    assert probe.value.iloc[0] > 0.9  # brightness separates the classes even through random features
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert {"test_vit (random init) (linear_probe)", "resnet18 (scratch) (finetune)"} <= set(
        comparisons.model_b
    )
    assert comparisons.p_value.between(0, 1).all()
    # Holm over the table's comparisons: never below the raw p, the smallest raw p times their number
    assert (comparisons.p_holm >= comparisons.p_value).all()
    assert comparisons.p_holm.min() == min(1.0, comparisons.p_value.min() * len(comparisons))
    for name in ("results.md", "report.html", "config.yaml", "provenance.json", "metrics.jsonl"):
        assert (out / name).is_file()
    assert paths["report.html"].read_text().count("<img") >= 2
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"linear_probe", "knn", "fewshot", "finetune", "classical"} <= {r.get("protocol") for r in logged}
    backbones = [r for r in logged if r.get("event") == "backbone"]
    assert {r["model"] for r in backbones} == {"tiny-mae", "test_vit (random init)"}
    assert all(r["parameters"] > 0 and r["flops_per_example"] > 0 for r in backbones)
    saved = Predictions.load(next((out / "predictions" / "image_folder").glob("tiny-mae-linear_probe.npz")))
    assert saved.prob.shape[1] == 2 and len(saved.y) == probe.n.iloc[0]


def test_limit_keeps_every_split_and_the_same_examples_for_every_seed(tmp_path, image_folder, bundle):
    tested = []
    for seed in (0, 1):
        config = folder_config(tmp_path, image_folder, bundle, limit=60, protocols=["knn"], baselines=[])
        config.seed, config.output = seed, str(tmp_path / f"seed{seed}")
        run_eval(config)
        rows = pd.read_csv(tmp_path / f"seed{seed}" / "results.csv")
        assert 2 <= rows.n.max() < 13  # a random half of the 13 test examples
        prediction = next((tmp_path / f"seed{seed}" / "predictions").rglob("*.npz"))
        tested.append(sorted(Predictions.load(prediction).sample_ids))
    assert tested[0] == tested[1]  # seeds perturb training, never which examples are tested


def test_unknown_protocol_or_task_is_a_config_error(tmp_path, image_folder, bundle):
    with pytest.raises(ConfigError, match="unknown protocols"):
        run_eval(folder_config(tmp_path, image_folder, bundle, protocols=["linear-probe"]))
    with pytest.raises(ConfigError, match="unknown task 'pneumonia'"):
        run_eval(EvalConfig(encoder=str(bundle), tasks=["pneumonia"]))


def test_cli_eval_on_a_folder(tmp_path, image_folder, bundle):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--bundle",
            str(bundle),
            "--folder",
            str(image_folder),
            "--label-column",
            "finding",
            "--id-column",
            "patient",
            "--protocols",
            "linear_probe,knn",
            "--baselines",
            "classical",
            "--out",
            str(tmp_path / "cli"),
            "n_boot=20",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "image_folder" in (tmp_path / "cli" / "results.md").read_text()


def test_cli_reports_a_channel_mismatch_in_one_line(tmp_path, make_image_folder, bundle):
    rgb = make_image_folder("rgb", channels=3)
    encoder = create_encoder("test_vit", in_chans=2, img_size=32)
    two = save_bundle(
        tmp_path / "two", encoder.state_dict(), {"encoder": {"name": "test_vit", "in_chans": 2}}
    )
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--bundle",
            str(two),
            "--folder",
            str(rgb),
            "--label-column",
            "finding",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 2
    assert "3-channel images but encoder two takes 2" in " ".join(result.output.split())


def test_cli_lists_the_registered_tasks():
    result = CliRunner().invoke(app, ["tasks", "pneumonia*"])
    assert result.exit_code == 0, result.output
    assert "pneumonia_xray_official" in result.output and "pneumoniamnist" in result.output


def test_cli_bench_without_a_bundle_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench"])
    assert result.exit_code == 2
    assert "medfm quickstart" in " ".join(result.output.split())


def test_task_protocols_limit_a_task_and_say_so(tmp_path, image_folder, bundle, caplog):
    config = folder_config(
        tmp_path,
        image_folder,
        bundle,
        protocols=["knn", "linear_probe"],
        baselines=[],
        task_protocols={"image_folder": ["knn"]},
    )
    run_eval(config)
    rows = pd.read_csv(tmp_path / "eval" / "results.csv")
    assert set(rows.protocol) == {"knn"}
    assert "protocol linear_probe is left out by task_protocols" in caplog.text
