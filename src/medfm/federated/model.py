"""The federated model: one classifier per task (its encoder and a linear head), rebuilt on every client from
the model spec in ``federation.json``, and the arrays a client and the server exchange.

Only floating-point tensors travel: integer buffers (BatchNorm's batch counter) stay on each holder, since
averaging counters means nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord
from torch import nn

from medfm.errors import ConfigError
from medfm.evaluate.backbones import Backbone, ImageBackbone
from medfm.evaluate.inputs import QUESTION_VOCAB
from medfm.evaluate.protocols.finetune import Classifier
from medfm.evaluate.timeseries_backbones import SeriesBackbone, SignalBackbone
from medfm.models.encoders import create_encoder
from medfm.seeding import seeded


class QuestionBackbone(Backbone):
    """Image features beside a mean of hashed question-token embeddings (VQA as classification)."""

    def __init__(self, image: ImageBackbone, dim: int = 64):
        super().__init__()
        self.image = image
        self.question = nn.EmbeddingBag(QUESTION_VOCAB, dim, mode="mean", padding_idx=0)
        self.embed_dim = image.embed_dim + dim

    def forward(self, batch):
        return torch.cat([self.image(batch), self.question(batch["question"])], dim=1)


def build_backbone(spec: dict[str, Any]) -> Backbone:
    """A task's backbone from its model spec (randomly initialised, or a bundle's weights)."""
    kind = spec["kind"]
    if kind in ("image", "vqa"):
        size = int(spec["image_size"])
        encoder = create_encoder(spec["encoder"], in_chans=int(spec["in_chans"]), img_size=size)
        image = ImageBackbone(encoder, size, float(spec["mean"]), float(spec["std"]))
        return QuestionBackbone(image) if kind == "vqa" else image
    if kind == "series":
        return SeriesBackbone(create_encoder(spec["encoder"], in_features=int(spec["in_features"])))
    if kind == "signal":
        return SignalBackbone(create_encoder(spec["encoder"], in_chans=int(spec["in_chans"])))
    raise ConfigError(f"unknown model kind {kind!r} in the federation's model spec")


def build_model(tasks: dict[str, Any], seed: int = 0) -> nn.ModuleDict:
    """One binary classifier per task, seeded so every holder builds the same initial weights."""
    with seeded(seed):
        return nn.ModuleDict(
            {name: Classifier(build_backbone(task["model"]), 2) for name, task in tasks.items()}
        )


def exchanged(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def to_arrays(model: nn.Module) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in exchanged(model).items()})


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Set the exchanged tensors of ``model`` from ``arrays`` (every one must be there, shapes equal)."""
    load_state(model, arrays.to_torch_state_dict())


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set the exchanged tensors of ``model`` from a state dict holding every one of them."""
    missing = sorted(set(exchanged(model)) - set(state))
    if missing:
        raise ConfigError(
            f"the arrays received lack {len(missing)} tensor(s) of the model, e.g. {missing[0]}"
        )
    model.load_state_dict(state, strict=False)


def task_keys(model: nn.ModuleDict) -> dict[str, list[str]]:
    """The exchanged tensor names of each task's classifier."""
    names = list(exchanged(model))
    return {task: [n for n in names if n.startswith(task + ".")] for task in model}
