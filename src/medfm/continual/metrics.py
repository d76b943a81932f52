r"""Continual-learning metrics computed from the result matrix of a stream of experiences.

``R`` is a ``[T, T]`` float array: ``R[i, j]`` is the score (higher is better, e.g. AUROC or accuracy)
on experience ``j``'s test set after training on experiences ``0..i`` in order. ``initial[j]`` is the
score on experience ``j`` of the model before any training (pretrained trunk, untrained heads).

Definitions (means skip NaN terms; a metric with no finite term is NaN):

* average accuracy, ACC (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"):
  :math:`\mathrm{ACC} = \frac{1}{T} \sum_j R_{T-1,j}`.
* average incremental accuracy (Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation
  Learning"): :math:`\frac{1}{T} \sum_i \frac{1}{i+1} \sum_{j \le i} R_{i,j}`.
* forgetting of experience ``j < T-1`` (Chaudhry et al. 2018, "Riemannian Walk for Incremental
  Learning"): :math:`f_j = \max_{j \le l \le T-2} R_{l,j} - R_{T-1,j}`, and forgetting
  :math:`F = \frac{1}{T-1} \sum_{j < T-1} f_j`. With ``reference="trained"`` the reference is the score
  right after training on ``j``: :math:`f_j = R_{j,j} - R_{T-1,j}`.
* backward transfer, BWT (Lopez-Paz & Ranzato 2017):
  :math:`\frac{1}{T-1} \sum_{j < T-1} (R_{T-1,j} - R_{j,j})`, i.e. minus the "trained" forgetting.
* forward transfer, FWT (Lopez-Paz & Ranzato 2017):
  :math:`\frac{1}{T-1} \sum_{j \ge 1} (R_{j-1,j} - \mathrm{initial}_j)`.

``forgetting(R, reference="trained")`` and :func:`backward_transfer` match avalanche's
``StreamForgetting`` and ``StreamBWT``, and :func:`forward_transfer` matches its
``StreamForwardTransfer``, when avalanche evaluates the whole stream after each training experience
(and, for forward transfer, once before training).
"""

from __future__ import annotations

import numpy as np

REFERENCES = ("max", "trained")


def _checked(R) -> np.ndarray:
    """R as a float array, after checking that it is a non-empty square matrix."""
    matrix = np.asarray(R, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"the result matrix must be a 2-D square array [T, T], got shape {matrix.shape}")
    if matrix.shape[0] < 1:
        raise ValueError("the result matrix must hold at least one experience (T >= 1)")
    return matrix


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN, without numpy's empty-slice warning, when there are none."""
    values = np.asarray(values, dtype=float)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _nanmax(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    kept = values[~np.isnan(values)]
    return float(kept.max()) if kept.size else float("nan")


def average_accuracy(R) -> float:
    """ACC: mean score over all experiences after training on the whole stream (last row of R)."""
    return _nanmean(_checked(R)[-1])


def average_incremental_accuracy(R) -> float:
    """Mean over training steps of the mean score on the experiences seen so far."""
    matrix = _checked(R)
    return _nanmean(np.array([_nanmean(matrix[i, : i + 1]) for i in range(len(matrix))]))


def forgetting_per_experience(R, reference: str = "max") -> np.ndarray:
    """Forgetting of experiences ``0..T-2``: reference score minus final score.

    ``reference="max"`` takes the best score seen before the last step (Chaudhry et al. 2018);
    ``reference="trained"`` the score right after training on the experience (avalanche).
    """
    matrix = _checked(R)
    if reference not in REFERENCES:
        raise ValueError(f"unknown forgetting reference {reference!r}; expected one of {REFERENCES}")
    last = len(matrix) - 1
    if reference == "max":
        best = np.array([_nanmax(matrix[j:last, j]) for j in range(last)])
    else:
        best = np.diag(matrix)[:last]
    return best - matrix[last, :last]


def forgetting(R, reference: str = "max") -> float:
    """Mean forgetting over experiences ``0..T-2``; NaN for a single experience."""
    return _nanmean(forgetting_per_experience(R, reference))


def backward_transfer_per_experience(R) -> np.ndarray:
    """Final score minus the score right after training, for experiences ``0..T-2``."""
    return -forgetting_per_experience(R, reference="trained")


def backward_transfer(R) -> float:
    """BWT: mean change on earlier experiences caused by training on later ones (negative: forgetting)."""
    return _nanmean(backward_transfer_per_experience(R))


def forward_transfer_per_experience(R, initial) -> np.ndarray:
    """Score on experience ``j`` just before training on it minus its initial score, for ``j = 1..T-1``."""
    matrix = _checked(R)
    start = np.asarray(initial, dtype=float)
    if start.shape != (len(matrix),):
        raise ValueError(
            f"initial must hold one score per experience, shape ({len(matrix)},), got shape {start.shape}"
        )
    steps = np.arange(1, len(matrix))
    return matrix[steps - 1, steps] - start[steps]


def forward_transfer(R, initial) -> float:
    """FWT: mean gain on not-yet-trained experiences from training on the earlier ones."""
    return _nanmean(forward_transfer_per_experience(R, initial))


def summarise(R, initial=None) -> dict[str, float]:
    """Every metric of this module in one dict; ``fwt`` is NaN without initial scores."""
    matrix = _checked(R)
    return {
        "acc": average_accuracy(matrix),
        "avg_incremental_acc": average_incremental_accuracy(matrix),
        "forgetting": forgetting(matrix, reference="max"),
        "forgetting_trained": forgetting(matrix, reference="trained"),
        "bwt": backward_transfer(matrix),
        "fwt": float("nan") if initial is None else forward_transfer(matrix, initial),
    }
