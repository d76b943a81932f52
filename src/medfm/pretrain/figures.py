"""Figures of a pretraining run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medfm.runs import read_metrics


def plot_loss_curve(metrics: str | Path, out: str | Path, title: str = "") -> Path:
    """Loss (and each logged loss term) against step, with the learning rate on a second axis."""
    records = [r for r in read_metrics(metrics) if "loss" in r]
    out = Path(out)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    steps = [r["step"] for r in records]
    terms = sorted({k for r in records for k in r if k.endswith("_loss")})
    ax.plot(steps, [r["loss"] for r in records], label="loss", color="black", linewidth=1.5)
    for term in terms:
        ax.plot(steps, [r.get(term) for r in records], label=term, linewidth=1)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if records and "lr" in records[0]:
        lr_axis = ax.twinx()
        lr_axis.plot(steps, [r["lr"] for r in records], color="tab:gray", linestyle=":", label="lr")
        lr_axis.set_ylabel("learning rate", color="tab:gray")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
