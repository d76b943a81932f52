"""Classical signal and ICU baselines: gradient boosting on RR-interval features and on ICU summaries.

``rr_gbm`` detects R peaks in each ECG (band-pass, squared slope, moving-window integration, then peaks
above a fraction of the typical beat energy around them, after Pan & Tompkins 1985) and describes the RR
intervals and the signal. ``icu_summary_gbm`` summarises each variable of an ICU window (mean, min, max,
last value, number of observations) beside the example's static inputs. These are the floors the
dataset notes report for CinC 2017 (RR features) and PhysioNet 2012 / 2019 (summaries).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import percentile_filter
from scipy.signal import butter, find_peaks, sosfiltfilt
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline

from medfm.evaluate.classical.base import CLASSICAL, Classical
from medfm.evaluate.tasks.base import TaskData
from medfm.evaluate.tasks.ecg import SAMPLING_RATE_HZ

QRS_BAND_HZ = (5.0, 15.0)  # where the QRS complex has most of its energy
INTEGRATION_S = 0.15  # about one QRS width
REFRACTORY_S = 0.2  # no two beats closer than this (300 bpm)
BEAT_THRESHOLD = 0.3  # a beat's energy is at least this fraction of the typical beat energy around it
LOCAL_CANDIDATES = 17  # candidates (one per 0.2-0.5 s) that define the typical beat energy around one
LOCAL_FLOOR = 0.1  # the local typical beat energy is at least this fraction of the record's
R_SEARCH_S = 0.05  # the R wave is searched this close to a detected beat
MIN_BEATS = 4  # fewer beats give no RR statistics (NaN)
IRREGULAR_FRACTION = 0.1  # successive RR change above 10 % of the mean RR counts as irregular

RR_FEATURES = (
    "rr_mean_s", "rr_median_s", "rr_std_s", "rr_cv", "rmssd_s", "pnn50", "rr_min_s", "rr_max_s",
    "irregular_fraction", "heart_rate_bpm", "n_beats", "r_amplitude_median", "r_amplitude_cv",
    "signal_std", "signal_range", "signal_abs_diff_mean", "duration_s",
)  # fmt: skip
ICU_SUMMARIES = ("mean", "min", "max", "last", "count")


def r_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of the R peaks of one lead ``[T]`` (empty for a flat or too short record)."""
    x = np.nan_to_num(np.asarray(signal, dtype=np.float64))
    if len(x) < fs:  # under a second: no RR interval to measure (and too short to filter)
        return np.zeros(0, dtype=np.int64)
    sos = butter(3, QRS_BAND_HZ, btype="bandpass", fs=fs, output="sos")
    slope = np.gradient(sosfiltfilt(sos, x))
    width = max(1, round(INTEGRATION_S * fs))
    energy = np.convolve(slope**2, np.ones(width) / width, mode="same")
    candidates, props = find_peaks(energy, height=0, distance=max(1, round(REFRACTORY_S * fs)))
    heights = props["peak_heights"]
    if not len(heights):
        return candidates
    # The 90th percentile of candidate energies is a beat even where T waves and noise double the number
    # of candidates. Taken over the candidates around each one, so that a stretch of large beats (a gain
    # change, an artefact) does not hide the smaller beats elsewhere, but kept between LOCAL_FLOOR and 1
    # times the record's own, so that noise in a stretch without beats (a lead off) is not taken for beats.
    record = np.percentile(heights, 90)
    local = percentile_filter(heights, 90, size=LOCAL_CANDIDATES, mode="nearest")
    typical = np.clip(local, LOCAL_FLOOR * record, record)
    return candidates[heights >= BEAT_THRESHOLD * typical]


def r_amplitudes(x: np.ndarray, peaks: np.ndarray, half_width: int) -> np.ndarray:
    """The largest deviation from the record's median within ``half_width`` samples of each peak
    (the energy peak sits near, not on, the R wave; either polarity)."""
    centred = np.abs(x - np.median(x))
    return np.array([centred[max(0, p - half_width) : p + half_width + 1].max() for p in peaks])


def rr_features(signal: np.ndarray, fs: float) -> np.ndarray:
    """The :data:`RR_FEATURES` of one ECG ``[leads, T]`` (first lead), NaN where there are too few beats."""
    x = np.nan_to_num(np.asarray(signal, dtype=np.float64)[0])
    out = dict.fromkeys(RR_FEATURES, np.nan)
    peaks = r_peaks(x, fs)
    out["n_beats"] = len(peaks)
    out["duration_s"] = len(x) / fs
    if len(x):
        low, high = np.percentile(x, [1, 99])
        out["signal_std"], out["signal_range"] = x.std(), high - low
        out["signal_abs_diff_mean"] = np.abs(np.diff(x)).mean() if len(x) > 1 else 0.0
    if len(peaks) >= MIN_BEATS:
        rr = np.diff(peaks) / fs
        diff = np.diff(rr)
        amplitude = r_amplitudes(x, peaks, round(R_SEARCH_S * fs))
        out.update(
            rr_mean_s=rr.mean(),
            rr_median_s=np.median(rr),
            rr_std_s=rr.std(),
            rr_cv=rr.std() / rr.mean(),
            rmssd_s=np.sqrt(np.mean(diff**2)),
            pnn50=np.mean(np.abs(diff) > 0.05),
            rr_min_s=rr.min(),
            rr_max_s=rr.max(),
            irregular_fraction=np.mean(np.abs(diff) > IRREGULAR_FRACTION * rr.mean()),
            heart_rate_bpm=60.0 / rr.mean(),
            r_amplitude_median=np.median(amplitude),
            r_amplitude_cv=amplitude.std() / max(amplitude.mean(), 1e-9),
        )
    return np.array([out[name] for name in RR_FEATURES], dtype=np.float32)


def ecg_features(data: TaskData) -> np.ndarray:
    return np.stack([rr_features(signal, SAMPLING_RATE_HZ) for signal in data.inputs["signal"]])


def summary_features(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per variable of ``series [T, F]``: :data:`ICU_SUMMARIES` (NaN where never observed, count 0),
    flattened variable-major to ``[F * 5]``."""
    series = np.asarray(series, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    count = mask.sum(axis=0)
    seen = count > 0
    observed = np.where(mask, series, np.nan)
    out = np.full((series.shape[1], len(ICU_SUMMARIES)), np.nan, dtype=np.float32)
    out[:, 4] = count
    if seen.any():
        values = observed[:, seen]
        out[seen, 0] = np.where(mask[:, seen], values, 0).sum(axis=0) / count[seen]
        out[seen, 1] = np.nanmin(values, axis=0)
        out[seen, 2] = np.nanmax(values, axis=0)
        last_row = len(series) - 1 - np.argmax(mask[::-1, seen], axis=0)
        out[seen, 3] = values[last_row, np.arange(values.shape[1])]
    return out.ravel()


def icu_features(data: TaskData) -> np.ndarray:
    """Summaries of every variable, then the example's ``static`` inputs when the task has them."""
    rows = [summary_features(s, m) for s, m in zip(data.inputs["series"], data.inputs["mask"])]
    if "static" in data.inputs:
        rows = [np.concatenate([row, static]) for row, static in zip(rows, data.inputs["static"])]
    return np.stack(rows).astype(np.float32)


class DropEmptyColumns(TransformerMixin, BaseEstimator):
    """Drops the features that have no value in the training data (an ICU variable or descriptor the set
    never records): scikit-learn's histogram gradient boosting fails to bin an all-NaN column."""

    def fit(self, X, y=None):
        self.keep_ = ~np.isnan(np.asarray(X, dtype=np.float64)).all(axis=0)
        return self

    def transform(self, X):
        return np.asarray(X)[:, self.keep_]


def gradient_boosting(seed: int):
    # A fixed number of slow rounds: the smallest training split (520 ECGs) is too small to hold out a
    # validation part for early stopping.
    return make_pipeline(
        DropEmptyColumns(),
        HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=300, max_leaf_nodes=15, l2_regularization=1.0, early_stopping=False,
            random_state=seed,
        ),
    )  # fmt: skip


CLASSICAL.register(
    "rr_gbm",
    Classical(ecg_features, gradient_boosting, "gradient boosting on RR-interval and amplitude features"),
)
CLASSICAL.register(
    "icu_summary_gbm",
    Classical(
        icu_features,
        gradient_boosting,
        "gradient boosting on per-variable mean, min, max, last value and count, with static inputs",
    ),
)
