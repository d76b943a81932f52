"""Linear probe as BioVFM: frozen features -> BatchNorm1d(affine=False) -> Linear.

The probe is trained on the whole training set at once with L-BFGS: in training mode the BatchNorm
then standardises with the exact training statistics (and, with ``momentum=None``, keeps exactly those
for inference), so the fit is deterministic and takes well under a second on a CPU. The L2 penalty is
chosen on the validation split (by loss) from a small grid; without a validation split the middle of
the grid is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfm.seeding import seeded


@dataclass
class LinearProbeConfig:
    max_iter: int = 100  # L-BFGS iterations
    l2: list[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2, 1e-1])


def probe_model(dim: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, momentum=None), nn.Linear(dim, outputs))


def probe_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, y) if multilabel else F.cross_entropy(logits, y)


def probabilities(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).numpy()


def targets(y: np.ndarray, multilabel: bool) -> torch.Tensor:
    return torch.as_tensor(y, dtype=torch.float32 if multilabel else torch.long)


def fit_probe(
    x: np.ndarray, y: np.ndarray, outputs: int, multilabel: bool, l2: float, max_iter: int = 200
) -> nn.Module:
    """Train a probe on features ``x`` ``[N, D]`` and labels ``y`` (indices or multi-hot)."""
    with seeded(0):  # the same starting weights every fit, without touching the caller's generators
        model = probe_model(x.shape[1], outputs).double()
    features = torch.as_tensor(x, dtype=torch.float64)
    target = targets(y, multilabel)
    if multilabel:
        target = target.double()
    linear = model[1]
    optimiser = torch.optim.LBFGS(
        linear.parameters(), lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )
    model.train()

    def closure():
        optimiser.zero_grad()
        loss = probe_loss(model(features), target, multilabel) + 0.5 * l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return model.float().eval()


@torch.no_grad()
def predict_probe(model: nn.Module, x: np.ndarray, multilabel: bool) -> np.ndarray:
    return probabilities(model(torch.as_tensor(x, dtype=torch.float32)), multilabel)


def select_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    outputs: int,
    multilabel: bool,
    config: LinearProbeConfig,
) -> tuple[nn.Module, dict[str, float]]:
    """The probe refitted with the penalty of lowest validation loss, and that choice (``l2``,
    ``val_loss``)."""
    grid = sorted(config.l2)
    chosen, best = grid[len(grid) // 2], float("nan")
    if len(val[0]) > 0 and len(grid) > 1:
        losses = {}
        for l2 in grid:
            model = fit_probe(*train, outputs, multilabel, l2, config.max_iter)
            with torch.no_grad():
                logits = model(torch.as_tensor(val[0], dtype=torch.float32))
                losses[l2] = float(probe_loss(logits, targets(val[1], multilabel), multilabel))
        chosen = min(losses, key=losses.get)
        best = losses[chosen]
    model = fit_probe(*train, outputs, multilabel, chosen, config.max_iter)
    return model, {"l2": chosen, "val_loss": best}


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test_x: np.ndarray,
    outputs: int,
    multilabel: bool,
    config: LinearProbeConfig,
) -> tuple[np.ndarray, dict[str, float]]:
    """Test probabilities and the chosen penalty (``l2``, with its ``val_loss``)."""
    model, fit = select_probe(train, val, outputs, multilabel, config)
    return predict_probe(model, test_x, multilabel), fit
