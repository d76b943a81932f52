"""The results report: files, formatting, ROC averaging and input checks, on synthetic results."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score

from medfm.evaluate.predictions import RESULT_COLUMNS, Predictions
from medfm.evaluate.report import format_estimate, format_p_value, roc_points, write_report

BINARY = "Chest X-ray: pneumonia <vs> normal"
MULTICLASS = "skin lesion (3 classes)"
MULTILABEL = "ECG rhythm labels"
NOTE = "Run on <b>synthetic</b> data & nothing else"


def result_row(task, model, protocol, metric, value, low, high, setting="", eval_set="test", subgroup="all"):
    return {
        "task": task,
        "modality": "xray",
        "model": model,
        "protocol": protocol,
        "setting": setting,
        "eval_set": eval_set,
        "subgroup": subgroup,
        "metric": metric,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n": 200,
        "n_subjects": 180,
    }


def synthetic_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for task in (BINARY, MULTICLASS, MULTILABEL):
        for model in ("vit-small", "resnet50"):
            for protocol in ("linear_probe", "knn"):
                for metric in ("auroc", "accuracy", "ece"):
                    value = rng.uniform(0.6, 0.9)
                    rows.append(result_row(task, model, protocol, metric, value, value - 0.03, value + 0.02))
    rows[0] = result_row(BINARY, "vit-small", "linear_probe", "auroc", 0.9123, 0.8811, 0.9404)
    rows += [
        result_row(BINARY, "vit-small", "fewshot", "auroc", 0.7012, 0.65, 0.74, setting="k=5"),
        result_row(BINARY, "vit-small", "fewshot", "auroc", 0.8034, np.nan, np.nan, setting="k=10"),
        result_row(BINARY, "vit-small", "linear_probe", "auroc", 0.8888, 0.85, 0.92, subgroup="sex=F"),
        result_row(
            BINARY, "vit-small", "linear_probe", "auroc", 0.8555, 0.80, 0.90, eval_set="unseen_question"
        ),
        result_row(BINARY, "resnet50", "linear_probe", "mcc", np.nan, np.nan, np.nan),
    ]
    return pd.DataFrame(rows)[list(RESULT_COLUMNS)]


def binary_predictions(model: str, protocol: str, n: int = 80, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * y + 0.7 * rng.uniform(size=n), 0, 1)
    return predictions(BINARY, model, protocol, ("normal", "pneumonia"), y, np.stack([1 - p1, p1], axis=1))


def multiclass_predictions(n: int = 90, seed: int = 1) -> Predictions:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return predictions(MULTICLASS, "vit-small", "knn", ("nevus", "melanoma", "keratosis"), y, prob)


def multilabel_predictions(n: int = 60, seed: int = 2) -> Predictions:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(n, 3)) < 0.4).astype(int)
    prob = np.clip(0.4 * y + 0.6 * rng.uniform(size=(n, 3)), 0, 1)
    return predictions(
        MULTILABEL, "resnet50", "linear_probe", ("AF", "LBBB", "RBBB"), y, prob, multilabel=True
    )


def predictions(task, model, protocol, classes, y, prob, multilabel=False) -> Predictions:
    ids = np.array([f"s{i}" for i in range(len(y))], dtype=object)
    return Predictions(task, model, protocol, classes, multilabel, y, prob, subjects=ids, sample_ids=ids)


def synthetic_comparisons() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "task": BINARY,
                "protocol": "linear_probe",
                "metric": "auroc",
                "model_a": "vit-small",
                "model_b": "resnet50",
                "value_a": 0.9123,
                "value_b": 0.8,
                "diff": 0.1123,
                "ci_low": 0.05,
                "ci_high": 0.17,
                "p_value": 0.00002,
                "p_holm": 0.00004,
            },
            {
                "task": MULTICLASS,
                "protocol": "knn",
                "metric": "auroc",
                "model_a": "vit-small",
                "model_b": "resnet50",
                "value_a": 0.7,
                "value_b": 0.72,
                "diff": -0.02,
                "ci_low": -0.06,
                "ci_high": 0.021,
                "p_value": 0.4321,
                "p_holm": 0.4321,
            },
        ]
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    preds = [
        binary_predictions("vit-small", "linear_probe"),
        binary_predictions("resnet50", "linear_probe", seed=3),
        multiclass_predictions(),
        multilabel_predictions(),
    ]
    paths = write_report(
        out,
        synthetic_rows(),
        preds,
        title="Benchmark <draft>",
        comparisons=synthetic_comparisons(),
        notes=[NOTE],
    )
    return out, paths


def test_every_file_is_written_and_every_figure_is_a_png(report):
    out, paths = report
    slugs = ["chest-x-ray-pneumonia-vs-normal", "skin-lesion-3-classes", "ecg-rhythm-labels"]
    expected = {"results.csv", "results.md", "report.html", "figures/overview.png"}
    expected |= {f"figures/{kind}-{slug}.png" for kind in ("roc", "bars") for slug in slugs}
    # the multi-class task (not the binary or multi-label ones) gets per-class tables and confusion matrices
    expected |= {"figures/confusion-skin-lesion-3-classes.png", "per_class.csv", "confusion.csv"}
    assert set(paths) == expected
    for name, path in paths.items():
        assert path == out / name and path.is_file()
        if name.endswith(".png"):
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width > 300 and image.height > 150


def test_csv_holds_every_row_unrounded(report):
    _, paths = report
    rows = synthetic_rows()
    # empty strings stay strings (setting ""), except in the numeric columns where they are NaN
    numeric_na = {column: [""] for column in ("value", "ci_low", "ci_high")}
    back = pd.read_csv(paths["results.csv"], keep_default_na=False, na_values=numeric_na)
    assert list(back.columns) == list(RESULT_COLUMNS)
    assert len(back) == len(rows)
    for column in ("task", "model", "protocol", "setting", "eval_set", "subgroup", "metric"):
        assert back[column].tolist() == rows[column].tolist()
    for column in ("value", "ci_low", "ci_high", "n"):
        np.testing.assert_array_equal(pd.to_numeric(back[column]), rows[column].to_numpy(dtype=float))


def test_markdown_tables_format_estimates_and_p_values(report):
    _, paths = report
    text = paths["results.md"].read_text(encoding="utf-8")
    assert text.startswith("# Benchmark <draft>\n")
    assert f"- {NOTE}" in text
    main_line = next(line for line in text.splitlines() if line.startswith("| vit-small | linear_probe |"))
    assert "| 0.912 [0.881, 0.940] |" in main_line
    assert "| vit-small | fewshot | k=10 | 0.803 |" in text  # value without its unknown interval
    main_table = text.split("### Test set, all subjects")[1].split("###")[0].strip().splitlines()
    header = [cell.strip() for cell in main_table[0].strip("|").split("|")]
    assert header == ["model", "protocol", "setting", "AUROC", "accuracy", "MCC", "ECE (lower is better)"]
    cells = {
        tuple(cells[:3]): dict(zip(header, cells))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in main_table[2:])
    }
    assert cells[("resnet50", "linear_probe", "")]["MCC"] == "–"  # NaN value
    assert cells[("vit-small", "fewshot", "k=5")]["accuracy"] == "–"  # no row at all
    # protocol then model, and k=5 before k=10
    order = [
        line.split(" | ")[:3] for line in text.split("### Test set")[1].splitlines() if line.startswith("| ")
    ]
    assert order[1:6] == [
        ["| vit-small", "fewshot", "k=5"],
        ["| vit-small", "fewshot", "k=10"],
        ["| resnet50", "knn", ""],
        ["| vit-small", "knn", ""],
        ["| resnet50", "linear_probe", ""],
    ]
    assert "| all | sex=F |" in text and "| 0.889 [0.850, 0.920] |" in text
    assert "| test | unseen_question |" in text and "0.856 [0.800, 0.900]" in text
    assert "| +0.112 [+0.050, +0.170] | <0.001 | <0.001 |" in text
    assert "| -0.020 [-0.060, +0.021] | 0.432 | 0.432 |" in text


def test_html_is_self_contained_and_escaped(report):
    _, paths = report
    page = paths["report.html"].read_text(encoding="utf-8")
    for task in (BINARY, MULTICLASS, MULTILABEL):
        assert html.escape(task) in page
    assert "<vs>" not in page
    figures = [name for name in paths if name.endswith(".png")]
    assert page.count("<img") == len(figures) == 8  # overview, bars and ROC of 3 tasks, a confusion figure
    assert page.count('src="data:image/png;base64,') == 8
    assert "&lt;b&gt;synthetic&lt;/b&gt; data &amp; nothing else" in page
    assert "<b>synthetic" not in page
    assert "Benchmark &lt;draft&gt;" in page
    assert "0.912 [0.881, 0.940]" in page and "&lt;0.001" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page


def test_multiclass_tasks_get_per_class_metrics_and_confusion_counts(report):
    _, paths = report
    pred = multiclass_predictions()
    predicted = pred.prob.argmax(axis=1)
    per_class = pd.read_csv(paths["per_class.csv"]).set_index("class")
    assert set(per_class["task"]) == {MULTICLASS}  # binary and multi-label tasks get none
    for c, name in enumerate(pred.classes):
        assert per_class.loc[name, "n"] == (pred.y == c).sum()
        assert per_class.loc[name, "recall"] == pytest.approx(recall_score(pred.y == c, predicted == c))
        assert per_class.loc[name, "precision"] == pytest.approx(precision_score(pred.y == c, predicted == c))
        assert per_class.loc[name, "auroc"] == pytest.approx(roc_auc_score(pred.y == c, pred.prob[:, c]))
    confusion = pd.read_csv(paths["confusion.csv"])
    expected = confusion_matrix(pred.y, predicted)
    for row in confusion.itertuples():
        assert row.count == expected[pred.classes.index(row.true), pred.classes.index(row.predicted)]
    text = paths["results.md"].read_text(encoding="utf-8")
    assert (
        "### Per class (one-vs-rest, test set)" in text and "![Confusion matrices](figures/confusion-" in text
    )


def test_task_without_predictions_gets_bars_but_no_roc(tmp_path):
    rows = synthetic_rows()
    paths = write_report(tmp_path, rows[rows["task"] == MULTICLASS])
    assert sorted(paths) == [
        "figures/bars-skin-lesion-3-classes.png",
        "report.html",
        "results.csv",
        "results.md",
    ]
    assert "| vit-small | knn |" in paths["results.md"].read_text(encoding="utf-8")


def test_binary_roc_is_class_one():
    preds = binary_predictions("m", "linear_probe")
    curve = roc_points(preds)
    assert curve.averaged == 0
    assert curve.auroc == pytest.approx(roc_auc_score(preds.y, preds.prob[:, 1]))
    assert curve.fpr[0] == 0 and curve.tpr[-1] == 1


def test_multiclass_roc_averages_classes_present_in_the_test_set():
    preds = multiclass_predictions()
    curve = roc_points(preds)
    per_class = [roc_auc_score(preds.y == c, preds.prob[:, c]) for c in range(3)]
    assert curve.averaged == 3 and curve.auroc == pytest.approx(np.mean(per_class))
    assert curve.tpr[0] == 0 and curve.tpr[-1] == 1 and np.all(np.diff(curve.tpr) >= 0)
    # the area under the averaged curve is close to the mean of the per-class areas
    area = np.sum(np.diff(curve.fpr) * (curve.tpr[1:] + curve.tpr[:-1]) / 2)
    assert area == pytest.approx(curve.auroc, abs=0.02)

    absent = preds.select(preds.y != 2)  # class 2 has no positives left: skipped, not an error
    assert roc_points(absent).averaged == 2


def test_multilabel_roc_matches_macro_auroc_and_skips_constant_labels():
    preds = multilabel_predictions()
    assert roc_points(preds).auroc == pytest.approx(roc_auc_score(preds.y, preds.prob, average="macro"))
    preds.y[:, 1] = 1
    assert roc_points(preds).averaged == 2
    preds.y[:] = 0
    assert roc_points(preds) is None


def test_formatting():
    assert format_estimate(0.91234, 0.88111, 0.94049) == "0.912 [0.881, 0.940]"
    assert format_estimate(0.91234, np.nan, 0.95) == "0.912"
    assert format_estimate(np.nan, 0.1, 0.2) == "–"
    assert format_estimate(0.01, -0.02, 0.04, signed=True) == "+0.010 [-0.020, +0.040]"
    assert [format_p_value(p) for p in (0.0031, 0.0009999, 0.001, 1.0, np.nan)] == [
        "0.003",
        "<0.001",
        "0.001",
        "1.000",
        "–",
    ]


def test_bad_rows_are_refused(tmp_path):
    rows = synthetic_rows()
    with pytest.raises(ValueError, match=r"ci_low, n\b"):
        write_report(tmp_path, rows.drop(columns=["ci_low", "n"]))
    with pytest.raises(ValueError, match="no result rows"):
        write_report(tmp_path, rows.iloc[:0])
    with pytest.raises(ValueError, match="share their key"):
        write_report(tmp_path, pd.concat([rows, rows.iloc[:1]]))
    with pytest.raises(ValueError, match="p_value"):
        write_report(tmp_path, rows, comparisons=synthetic_comparisons().drop(columns="p_value"))
    assert not (tmp_path / "results.csv").exists()
