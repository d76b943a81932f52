"""Continual-learning metrics on hand-built result matrices, and the same metrics from avalanche."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from medfm.continual.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    backward_transfer_per_experience,
    forgetting,
    forgetting_per_experience,
    forward_transfer,
    forward_transfer_per_experience,
    summarise,
)

EXACT = 1e-12
NAN = float("nan")

# R[i, j]: score on experience j after training on experiences 0..i.
R3 = np.array(
    [
        [0.80, 0.50, 0.40],
        [0.85, 0.92, 0.55],  # experience 0 still improves after training on experience 1
        [0.60, 0.85, 0.95],
    ]
)
INITIAL3 = np.array([0.50, 0.45, 0.52])
# acc = (0.60 + 0.85 + 0.95) / 3 = 0.80
# avg incremental = (0.80 + (0.85 + 0.92) / 2 + 0.80) / 3 = (0.80 + 0.885 + 0.80) / 3 = 2.485 / 3
# forgetting, max:     j=0: max(0.80, 0.85) - 0.60 = 0.25; j=1: 0.92 - 0.85 = 0.07; mean 0.16
# forgetting, trained: j=0: 0.80 - 0.60 = 0.20;            j=1: 0.92 - 0.85 = 0.07; mean 0.135
# bwt = -0.135
# fwt: j=1: 0.50 - 0.45 = 0.05; j=2: 0.55 - 0.52 = 0.03; mean 0.04
EXPECTED3 = {
    "acc": 0.80,
    "avg_incremental_acc": 2.485 / 3,
    "forgetting": 0.16,
    "forgetting_trained": 0.135,
    "bwt": -0.135,
    "fwt": 0.04,
}

R4 = np.array(
    [
        [0.70, 0.52, 0.48, 0.50],
        [0.75, 0.80, 0.55, 0.51],
        [0.72, 0.78, 0.90, 0.60],
        [
            0.65,
            0.82,
            0.70,
            0.88,
        ],  # experience 1 ends above its score right after training: negative forgetting
    ]
)
INITIAL4 = np.array([0.50, 0.50, 0.50, 0.50])
# acc = (0.65 + 0.82 + 0.70 + 0.88) / 4 = 3.05 / 4 = 0.7625
# avg incremental = (0.70 + 1.55 / 2 + 2.40 / 3 + 3.05 / 4) / 4
#                 = (0.70 + 0.775 + 0.80 + 0.7625) / 4 = 0.759375
# forgetting, max:     j=0: max(0.70, 0.75, 0.72) - 0.65 = 0.10; j=1: max(0.80, 0.78) - 0.82 = -0.02;
#                      j=2: 0.90 - 0.70 = 0.20; mean 0.28 / 3
# forgetting, trained: j=0: 0.70 - 0.65 = 0.05; j=1: 0.80 - 0.82 = -0.02;
#                      j=2: 0.90 - 0.70 = 0.20; mean 0.23 / 3
# bwt = -0.23 / 3
# fwt: j=1: 0.52 - 0.50 = 0.02; j=2: 0.55 - 0.50 = 0.05; j=3: 0.60 - 0.50 = 0.10; mean 0.17 / 3
EXPECTED4 = {
    "acc": 0.7625,
    "avg_incremental_acc": 0.759375,
    "forgetting": 0.28 / 3,
    "forgetting_trained": 0.23 / 3,
    "bwt": -0.23 / 3,
    "fwt": 0.17 / 3,
}

# R4 with two scores not measured: R[1, 0] and R[3, 1].
R4_GAPS = R4.copy()
R4_GAPS[1, 0] = NAN
R4_GAPS[3, 1] = NAN
# acc = (0.65 + 0.70 + 0.88) / 3 = 2.23 / 3
# avg incremental: the row after experience 1 is 0.80 alone; (0.70 + 0.80 + 0.80 + 2.23 / 3) / 4
# forgetting, max:     j=0: max(0.70, 0.72) - 0.65 = 0.07; j=1: no final score; j=2: 0.20; mean 0.135
# forgetting, trained: j=0: 0.05; j=1: no final score; j=2: 0.20; mean 0.125
# bwt = -0.125; fwt as for R4 (R[0, 1], R[1, 2], R[2, 3] are all measured)
EXPECTED4_GAPS = {
    "acc": 2.23 / 3,
    "avg_incremental_acc": (0.70 + 0.80 + 0.80 + 2.23 / 3) / 4,
    "forgetting": 0.135,
    "forgetting_trained": 0.125,
    "bwt": -0.125,
    "fwt": 0.17 / 3,
}

CASES = {"3x3": (R3, INITIAL3, EXPECTED3), "4x4": (R4, INITIAL4, EXPECTED4)}


def assert_same(actual: dict[str, float], expected: dict[str, float]) -> None:
    """Equal keys and values within EXACT; NaN equals NaN."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=EXACT), key


# --- hand-worked values --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_each_metric_matches_the_hand_worked_value(case):
    R, initial, expected = CASES[case]
    assert average_accuracy(R) == pytest.approx(expected["acc"], abs=EXACT)
    assert average_incremental_accuracy(R) == pytest.approx(expected["avg_incremental_acc"], abs=EXACT)
    assert forgetting(R) == pytest.approx(expected["forgetting"], abs=EXACT)
    assert forgetting(R, reference="trained") == pytest.approx(expected["forgetting_trained"], abs=EXACT)
    assert backward_transfer(R) == pytest.approx(expected["bwt"], abs=EXACT)
    assert forward_transfer(R, initial) == pytest.approx(expected["fwt"], abs=EXACT)
    assert_same(summarise(R, initial), expected)


def test_per_experience_values():
    np.testing.assert_allclose(forgetting_per_experience(R4), [0.10, -0.02, 0.20], rtol=0, atol=EXACT)
    np.testing.assert_allclose(
        forgetting_per_experience(R4, reference="trained"), [0.05, -0.02, 0.20], rtol=0, atol=EXACT
    )
    np.testing.assert_allclose(backward_transfer_per_experience(R4), [-0.05, 0.02, -0.20], rtol=0, atol=EXACT)
    np.testing.assert_allclose(
        forward_transfer_per_experience(R4, INITIAL4), [0.02, 0.05, 0.10], rtol=0, atol=EXACT
    )


def test_unmeasured_scores_are_left_out():
    assert_same(summarise(R4_GAPS, INITIAL4), EXPECTED4_GAPS)
    np.testing.assert_allclose(forgetting_per_experience(R4_GAPS), [0.07, NAN, 0.20], rtol=0, atol=EXACT)


def test_a_strategy_measured_only_after_the_whole_stream():
    last_row_only = np.full_like(R4, NAN)
    last_row_only[-1] = R4[-1]
    # nothing before the last step: every metric that needs an earlier score is NaN
    expected = {
        "acc": 0.7625,
        "avg_incremental_acc": 0.7625,
        "forgetting": NAN,
        "forgetting_trained": NAN,
        "bwt": NAN,
        "fwt": NAN,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-NaN slices must not warn
        assert_same(summarise(last_row_only, INITIAL4), expected)


def test_a_single_experience():
    R = np.array([[0.9]])
    assert forgetting_per_experience(R).shape == (0,)
    assert_same(
        summarise(R, [0.5]),
        {
            "acc": 0.9,
            "avg_incremental_acc": 0.9,
            "forgetting": NAN,
            "forgetting_trained": NAN,
            "bwt": NAN,
            "fwt": NAN,
        },
    )


def test_summary_without_initial_scores_has_no_forward_transfer():
    summary = summarise(R3)
    assert math.isnan(summary["fwt"])
    assert summary["acc"] == pytest.approx(0.80, abs=EXACT)


# --- input validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "R",
    [np.zeros((2, 3)), np.zeros(3), np.zeros((2, 2, 2)), np.zeros((0, 0)), 0.5],
    ids=["non-square", "1-D", "3-D", "empty", "scalar"],
)
@pytest.mark.parametrize(
    "metric",
    [average_accuracy, average_incremental_accuracy, forgetting, backward_transfer, summarise],
)
def test_rejects_what_is_not_a_square_result_matrix(R, metric):
    with pytest.raises(ValueError, match="result matrix"):
        metric(R)


def test_rejects_an_unknown_forgetting_reference():
    with pytest.raises(ValueError, match="unknown forgetting reference 'first'"):
        forgetting(R3, reference="first")
    with pytest.raises(ValueError, match="unknown forgetting reference"):
        forgetting_per_experience(R3, reference="last")


def test_rejects_initial_scores_of_the_wrong_length():
    with pytest.raises(ValueError, match="one score per experience"):
        forward_transfer(R3, INITIAL4)


# --- peer check: avalanche ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def avalanche():
    """avalanche's standalone metric classes; the peer check skips when avalanche-lib is not installed."""
    reason = "avalanche-lib is not installed: the peer check against avalanche's metrics needs it"
    with warnings.catch_warnings():
        # avalanche imports qpsolvers, which warns on import when no QP solver is installed
        warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
        forgetting_bwt = pytest.importorskip("avalanche.evaluation.metrics.forgetting_bwt", reason=reason)
        forward = pytest.importorskip("avalanche.evaluation.metrics.forward_transfer", reason=reason)
        mean = pytest.importorskip("avalanche.evaluation.metrics.mean", reason=reason)
    return SimpleNamespace(
        Forgetting=forgetting_bwt.Forgetting,
        BWT=forgetting_bwt.BWT,
        ForwardTransfer=forward.ForwardTransfer,
        Mean=mean.Mean,
    )


def replay_stream(R: np.ndarray, initial: np.ndarray, avl) -> dict:
    """Feed avalanche's standalone metrics the scores in the order a real stream produces them.

    This mirrors avalanche 0.6.0's plugins (``StreamForgetting``, ``StreamBWT``, ``StreamForwardTransfer``)
    with periodic evaluation on (``eval_every > -1``), which evaluates the whole stream once before
    training and once after training on each experience:

    * forgetting and BWT: a score is ``initial`` exactly when the evaluated experience is the one just
      trained (``train_exp_id == eval_exp_id``); every other score is a "last" value, and ``before_eval``
      calls ``reset_last()`` so that "last" holds only the current pass. In the pass before training no
      experience has been trained, so all its scores are "last" values that the next pass discards.
    * forward transfer: every score of the pass before training is ``initial``; afterwards only the score
      of the experience following the one just trained (``train_exp_id == eval_exp_id - 1``) is recorded.
    * the Stream* plugins average, with avalanche's ``Mean``, each evaluated experience's ``result_key``
      that is not None, afresh in each pass.

    Returns the per-experience results after the last pass and each metric's stream average after every
    training pass.
    """
    metrics = {"forgetting": avl.Forgetting(), "bwt": avl.BWT(), "fwt": avl.ForwardTransfer()}
    metrics["forgetting"].reset_last()
    metrics["bwt"].reset_last()
    for j, score in enumerate(initial):
        metrics["forgetting"].update(j, score)
        metrics["bwt"].update(j, score)
        metrics["fwt"].update(j, score, initial=True)
    stream: dict[str, list[float]] = {name: [] for name in metrics}
    for i, row in enumerate(R):
        metrics["forgetting"].reset_last()
        metrics["bwt"].reset_last()
        means = {name: avl.Mean() for name in metrics}
        for j, score in enumerate(row):
            metrics["forgetting"].update(j, float(score), initial=j == i)
            metrics["bwt"].update(j, float(score), initial=j == i)
            if j == i + 1:
                metrics["fwt"].update(j, float(score))
            for name, metric in metrics.items():
                value = metric.result_key(j)
                if value is not None:
                    means[name].update(value, weight=1)
        for name, mean in means.items():
            stream[name].append(mean.result())
    return {"per_experience": {name: metric.result() for name, metric in metrics.items()}, "stream": stream}


def as_dict(values: np.ndarray, first: int) -> dict[int, float]:
    return {first + k: float(v) for k, v in enumerate(values)}


def assert_same_per_experience(actual: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(actual) == sorted(expected)
    for k, value in expected.items():
        assert actual[k] == pytest.approx(value, abs=EXACT), k


@pytest.mark.parametrize("case", CASES)
def test_matches_avalanche_per_experience_and_averaged(case, avalanche):
    R, initial, _ = CASES[case]
    replayed = replay_stream(R, initial, avalanche)
    per_experience, stream = replayed["per_experience"], replayed["stream"]

    assert_same_per_experience(
        per_experience["forgetting"], as_dict(forgetting_per_experience(R, reference="trained"), 0)
    )
    assert_same_per_experience(per_experience["bwt"], as_dict(backward_transfer_per_experience(R), 0))
    assert_same_per_experience(per_experience["fwt"], as_dict(forward_transfer_per_experience(R, initial), 1))

    assert stream["forgetting"][-1] == pytest.approx(forgetting(R, reference="trained"), abs=EXACT)
    assert stream["bwt"][-1] == pytest.approx(backward_transfer(R), abs=EXACT)
    assert stream["fwt"][-1] == pytest.approx(forward_transfer(R, initial), abs=EXACT)


@pytest.mark.parametrize("case", CASES)
def test_matches_avalanche_after_every_training_step(case, avalanche):
    """The stream averages avalanche reports after training on experience i, i >= 1, are medfm's metrics
    of the stream so far. Forward transfer after step i already includes experience i + 1, evaluated
    before it is trained. (After step 0 avalanche reports forgetting 0 from an empty mean where medfm
    says NaN, so that step is left out.)"""
    R, initial, _ = CASES[case]
    stream = replay_stream(R, initial, avalanche)["stream"]
    size = len(R)
    for i in range(1, size):
        seen = slice(0, i + 1)
        assert stream["forgetting"][i] == pytest.approx(forgetting(R[seen, seen], "trained"), abs=EXACT)
        assert stream["bwt"][i] == pytest.approx(backward_transfer(R[seen, seen]), abs=EXACT)
        ahead = slice(0, min(i + 2, size))
        assert stream["fwt"][i] == pytest.approx(forward_transfer(R[ahead, ahead], initial[ahead]), abs=EXACT)
