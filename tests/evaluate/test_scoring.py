"""Result rows: eval sets from flags, subgroups from group columns, values from the metrics, draws."""

from __future__ import annotations

import numpy as np
import pytest

from medfm.evaluate.metrics import METRICS, compute_metrics
from medfm.evaluate.predictions import RESULT_COLUMNS, Predictions
from medfm.evaluate.scoring import score, score_draws

N = 120


def _predictions(seed: int = 0, setting: str = "linear") -> Predictions:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, N), 0, 1)
    site = np.array(["a"] * 60 + ["b"] * 50 + ["c"] * 10)  # site c is below min_subgroup
    return Predictions(
        task="pneumonia",
        model="vit-s",
        protocol="linear_probe",
        classes=("normal", "pneumonia"),
        multilabel=False,
        y=y,
        prob=np.stack([1 - p, p], axis=1),
        subjects=np.array([f"s{i // 3}" for i in range(N)], dtype=object),  # 3 examples per subject
        sample_ids=np.array([f"x{i}" for i in range(N)], dtype=object),
        setting=setting,
        groups={"sex": np.array(["F", "M"] * (N // 2)), "site": site},
        flags={"hard": np.arange(N) < 45, "external": np.zeros(N, dtype=bool)},
    )


def test_score_rows():
    pred = _predictions()
    rows = score(pred, "xray", n_boot=200, seed=0, min_subgroup=20)
    assert all(tuple(row) == RESULT_COLUMNS for row in rows)
    by_subset = {}
    for row in rows:
        by_subset.setdefault((row["eval_set"], row["subgroup"]), []).append(row)
    # the empty "external" flag and the 10-example site c are left out
    assert set(by_subset) == {
        ("test", "all"),
        ("hard", "all"),
        ("test", "sex=F"),
        ("test", "sex=M"),
        ("test", "site=a"),
        ("test", "site=b"),
    }
    masks = {
        ("test", "all"): np.ones(N, dtype=bool),
        ("hard", "all"): pred.flags["hard"],
        ("test", "sex=F"): pred.groups["sex"] == "F",
        ("test", "sex=M"): pred.groups["sex"] == "M",
        ("test", "site=a"): pred.groups["site"] == "a",
        ("test", "site=b"): pred.groups["site"] == "b",
    }
    for subset, subset_rows in by_subset.items():
        mask = masks[subset]
        expected = compute_metrics(pred.y[mask], pred.prob[mask], multilabel=False)
        assert [row["metric"] for row in subset_rows] == list(METRICS)
        for row in subset_rows:
            assert row["value"] == pytest.approx(expected[row["metric"]], abs=1e-12)
            assert row["n"] == mask.sum()
            assert row["n_subjects"] == len(set(pred.subjects[mask]))
            assert (row["task"], row["modality"], row["model"]) == ("pneumonia", "xray", "vit-s")
            assert (row["protocol"], row["setting"]) == ("linear_probe", "linear")
            if row["metric"] != "ece":  # bootstrap ECE is biased upwards, the others centre on the value
                assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert by_subset[("hard", "all")][0]["n"] == 45
    assert by_subset[("hard", "all")][0]["n_subjects"] == 15
    # a subject's three examples alternate sex, so every subject appears in both subgroups
    assert by_subset[("test", "sex=F")][0]["n_subjects"] == 40

    with_small = score(pred, "xray", n_boot=10, min_subgroup=10)
    assert any(row["subgroup"] == "site=c" for row in with_small)


def test_score_draws_summarises_across_draws():
    draws = [_predictions(seed, setting="5-shot") for seed in range(5)]
    rows = score_draws(draws, "xray")
    assert [row["metric"] for row in rows] == list(METRICS)
    per_draw = {m: [compute_metrics(p.y, p.prob, False)[m] for p in draws] for m in METRICS}
    for row in rows:
        values = per_draw[row["metric"]]
        assert row["value"] == pytest.approx(np.mean(values), abs=1e-12)
        assert row["ci_low"] == pytest.approx(np.percentile(values, 2.5), abs=1e-12)
        assert row["ci_high"] == pytest.approx(np.percentile(values, 97.5), abs=1e-12)
        assert row["ci_low"] < row["ci_high"]
        assert (row["eval_set"], row["subgroup"], row["setting"]) == ("test", "all", "5-shot")
        assert (row["n"], row["n_subjects"]) == (N, 40)


def test_score_draws_refuses_mixed_runs():
    with pytest.raises(ValueError, match="different runs"):
        score_draws([_predictions(0, "5-shot"), _predictions(1, "10-shot")], "xray")
