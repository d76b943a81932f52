"""Figures of a pretraining run."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch

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


def plot_reconstructions(
    method: torch.nn.Module, images: torch.Tensor, out: str | Path, title: str = ""
) -> Path:
    """For MAE: each picture, what the encoder saw (hidden patches grey) and the reconstruction.

    ``images`` are normalised views ``[N, C, H, W]`` (the method's own input).
    """
    was_training = method.training
    method.eval()
    try:
        reconstruction, mask = method.reconstruct(images)
    finally:
        method.train(was_training)
    visible = images * (1 - mask) + images.min() * mask
    pasted = images * (1 - mask) + reconstruction * mask
    rows = [("input", images), ("visible to the encoder", visible), ("reconstruction", pasted)]
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n, 1.5 * len(rows)), dpi=120, squeeze=False)
    for r, (label, batch) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            picture = batch[i].float()
            low, high = images[i].min(), images[i].max()  # one intensity scale per picture
            shown = ((picture - low) / (high - low + 1e-6)).clamp(0, 1)
            if shown.shape[0] == 1:
                ax.imshow(shown[0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(shown[:3].permute(1, 2, 0).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
