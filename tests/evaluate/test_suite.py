"""The evaluation suite end to end, on a folder of images built by the test and a tiny bundle."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from medfm.cli import app
from medfm.errors import ConfigError
from medfm.evaluate.console import summary
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
    """The test folder with its fixed split (cross-validation is tested on its own)."""
    extra.setdefault("cv_folds", 0)
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
        assert set(rows.model) == {"tiny-mae"}  # no baseline asked for, none run
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


def three_class_folder(root, per_class: int = 60):
    """180 images, 3 classes told apart by brightness (with overlap), no patient column."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    rows = ["path,label"]
    for index in range(3 * per_class):
        label = ("dark", "grey", "bright")[index % 3]
        level = (70, 128, 186)[index % 3] + rng.normal(0, 20)
        pixels = np.clip(rng.normal(level, 30, size=(32, 32)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index:03d}.png")
        rows.append(f"images/{index:03d}.png,{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cli_cross_validates_a_small_folder_and_shows_widths_and_confusions(tmp_path, bundle):
    folder = three_class_folder(tmp_path / "lesions")
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--bundle",
            str(bundle),
            "--folder",
            str(folder),
            "--modality",
            "dermoscopy",
            "--protocols",
            "linear_probe,knn",
            "--out",
            str(tmp_path / "cv"),
            "n_boot=50",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "5-fold cross-validation grouped by subject" in printed and "width" in printed
    out = tmp_path / "cv"
    rows = pd.read_csv(out / "results.csv")
    auroc = rows[(rows.metric == "auroc") & (rows.eval_set == "test") & (rows.subgroup == "all")]
    assert (auroc.n == 180).all() and (auroc.n_subjects == 180).all()  # every image tested once, pooled
    assert (auroc.ci_high - auroc.ci_low < 0.35).all()
    report = (out / "results.md").read_text()
    assert "Modality: dermoscopy" in report and "![Confusion matrices](figures/confusion-" in report
    confusion = pd.read_csv(out / "confusion.csv")
    probe = confusion[(confusion.model == "tiny-mae") & (confusion.protocol == "linear_probe")]
    assert probe["count"].sum() == 180 and len(probe) == 9
    per_class = pd.read_csv(out / "per_class.csv")
    assert set(per_class["class"]) == {"dark", "grey", "bright"} and (per_class.n == 60).all()
    # random init and the classical baseline ran; the requested scratch model needs fine-tuning
    assert len(set(auroc.model)) >= 3 and any("random init" in m for m in auroc.model)
    assert "baseline scratch skipped: it trains with the finetune protocol" in printed
    assert "baseline scratch skipped" in report


def test_cross_validated_predictions_pool_every_fold_and_keep_subjects_whole(tmp_path, image_folder, bundle):
    config = folder_config(
        tmp_path, image_folder, bundle, protocols=["linear_probe"], baselines=[], cv_folds=4
    )
    run_eval(config)
    pred = Predictions.load(tmp_path / "eval" / "predictions" / "image_folder" / "tiny-mae-linear_probe.npz")
    assert len(pred.y) == 120 and len(set(pred.sample_ids)) == 120  # every image once
    logged = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    fit = next(r for r in logged if r.get("protocol") == "linear_probe")
    assert fit["folds"] == 4 and len(fit["l2"]) == 4


def test_console_summary_fits_an_80_column_terminal(tmp_path, image_folder, bundle):
    run_eval(folder_config(tmp_path, image_folder, bundle, protocols=["linear_probe", "knn"]))
    terminal = Console(width=80, file=io.StringIO(), record=True)
    for part in summary(tmp_path / "eval"):
        terminal.print(part)
    text = terminal.export_text()
    assert "tiny-mae" in text and "pixels_logreg" in text and "width" in text
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text


def test_encoder_label_names_the_encoder_in_results_and_comparisons(tmp_path, image_folder, bundle):
    config = folder_config(
        tmp_path, image_folder, bundle, limit=60, protocols=["linear_probe"], baselines=["random_init"]
    )
    config.encoder_label = "mae-short"  # e.g. one recipe pretrained with several seeds in a grid
    run_eval(config)
    rows = pd.read_csv(tmp_path / "eval" / "results.csv")
    assert set(rows.model) == {"mae-short", "test_vit (random init)"}
    assert pd.read_csv(tmp_path / "eval" / "comparisons.csv").model_a.tolist() == ["mae-short (linear_probe)"]
