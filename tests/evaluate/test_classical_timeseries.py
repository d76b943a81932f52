"""RR-interval features on synthetic ECGs of known rhythm, ICU summaries, and both baselines on real data."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from medfm.evaluate.classical import CLASSICAL, fit_predict
from medfm.evaluate.classical.timeseries import (
    ICU_SUMMARIES,
    RR_FEATURES,
    gradient_boosting,
    icu_features,
    r_peaks,
    rr_features,
    summary_features,
)
from medfm.evaluate.tasks.ecg import CinC2017Rhythm
from medfm.evaluate.tasks.icu import PhysioNet2012Mortality

FS = 300.0


@pytest.fixture(autouse=True)
def one_thread():
    # Gradient boosting's threads cost more than they save on a few hundred samples on a busy machine.
    with threadpool_limits(1):
        yield


def synthetic_ecg(beats_s: np.ndarray, duration_s: float = 30.0, polarity: float = 1.0) -> np.ndarray:
    """``[1, T]``: a narrow R wave (1 mV) and a broad T wave (0.3 mV, 250 ms later) per beat, plus noise."""
    t = np.arange(round(duration_s * FS)) / FS
    x = np.zeros_like(t)
    for beat in beats_s:
        x += polarity * np.exp(-0.5 * ((t - beat) / 0.012) ** 2)
        x += 0.3 * np.exp(-0.5 * ((t - beat - 0.25) / 0.05) ** 2)
    x += 0.02 * np.random.default_rng(0).standard_normal(len(t))
    return x[None].astype(np.float32)


def feature(row: np.ndarray, name: str) -> float:
    return float(row[RR_FEATURES.index(name)])


@pytest.mark.parametrize("polarity", [1.0, -1.0])
def test_regular_75_bpm(polarity):
    beats = np.arange(0.4, 30, 0.8)  # 75 bpm: 37 beats, RR 0.8 s
    signal = synthetic_ecg(beats, polarity=polarity)
    peaks = r_peaks(signal[0], FS)
    assert len(peaks) == len(beats) == 37
    np.testing.assert_allclose(peaks / FS, beats, atol=0.02)
    row = rr_features(signal, FS)
    assert row.shape == (len(RR_FEATURES),) and row.dtype == np.float32
    assert feature(row, "rr_mean_s") == pytest.approx(0.8, abs=0.002)
    assert feature(row, "heart_rate_bpm") == pytest.approx(75, abs=0.2)
    assert feature(row, "rr_std_s") < 0.005 and feature(row, "rr_cv") < 0.01
    assert feature(row, "pnn50") == feature(row, "irregular_fraction") == 0
    assert feature(row, "n_beats") == 37 and feature(row, "duration_s") == 30
    assert feature(row, "r_amplitude_median") == pytest.approx(1.0, abs=0.1)


def test_irregular_rhythm():
    rr = np.random.default_rng(1).uniform(0.45, 1.2, size=40)
    beats = 0.3 + np.concatenate([[0], np.cumsum(rr)])
    beats = beats[beats < 29.7]
    row = rr_features(synthetic_ecg(beats), FS)
    assert feature(row, "n_beats") == len(beats)
    assert feature(row, "rr_mean_s") == pytest.approx(np.diff(beats).mean(), abs=0.005)
    assert feature(row, "rr_cv") > 0.15 and feature(row, "irregular_fraction") > 0.6


def test_too_few_beats_give_nan_rr_features():
    flat = np.zeros((1, 900), dtype=np.float32)
    three_beats = synthetic_ecg(np.array([0.4, 1.2, 2.0]), duration_s=3)
    for signal, beats in ((flat, 0), (three_beats, 3)):
        row = rr_features(signal, FS)
        assert feature(row, "n_beats") == beats
        assert np.isnan(feature(row, "rr_mean_s")) and np.isnan(feature(row, "heart_rate_bpm"))
        assert feature(row, "duration_s") == 3 and np.isfinite(feature(row, "signal_std"))
    assert feature(rr_features(flat, FS), "signal_std") == 0


def test_no_beats_found_in_noise_after_a_lead_comes_off():
    signal = synthetic_ecg(np.arange(0.4, 15, 0.8))
    signal[0, 4500:] = 0.02 * np.random.default_rng(3).standard_normal(4500)
    peaks = r_peaks(signal[0], FS)
    assert len(peaks) == 19 and peaks.max() < 4500


def test_icu_summaries_by_hand():
    nan = np.nan
    series = np.array([[1.0, nan, 2.0], [nan, nan, 4.0], [3.0, nan, 9.0], [nan, nan, 1.0]], dtype=np.float32)
    rows = summary_features(series, ~np.isnan(series)).reshape(3, len(ICU_SUMMARIES))
    np.testing.assert_array_equal(rows[0], [2, 1, 3, 3, 2])  # mean, min, max, last, count
    np.testing.assert_array_equal(rows[1], [nan, nan, nan, nan, 0])
    np.testing.assert_array_equal(rows[2], [4, 1, 9, 1, 4])


def test_baselines_registered():
    assert CLASSICAL.get("rr_gbm").features.__name__ == "ecg_features"
    assert CLASSICAL.get("icu_summary_gbm").features is icu_features


def test_gradient_boosting_takes_a_feature_never_observed():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 3))
    x[:, 1] = np.nan
    y = (x[:, 0] > 0).astype(int)
    prob = gradient_boosting(0).fit(x, y).predict_proba(x)
    assert prob.shape == (60, 2) and ((prob[:, 1] > 0.5) == y).mean() > 0.9


def test_rr_gbm_on_real_records(dataset):
    data = CinC2017Rhythm(dataset("ecg-cinc2017-af"), limit=200).load()
    prob = fit_predict(CLASSICAL.get("rr_gbm"), data.part("train"), data.part("test"))
    assert prob.shape == (int((data.split == "test").sum()), 4)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-6)


def test_icu_summary_gbm_on_real_stays(dataset):
    data = PhysioNet2012Mortality(dataset("icu-physionet2012"), limit=300).load()
    features = icu_features(data)
    assert features.shape == (300, 37 * len(ICU_SUMMARIES) + 5)
    assert np.isnan(features[:, -2]).all()  # ICUType: absent from every record of this copy of set A
    prob = fit_predict(CLASSICAL.get("icu_summary_gbm"), data.part("train"), data.part("test"))
    assert prob.shape == (int((data.split == "test").sum()), 2)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-6)
