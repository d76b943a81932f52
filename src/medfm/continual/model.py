"""The continual model: one ViT trunk shared by every experience and modality, a tokenizer per non-image
input kind, and the stream's heads.

Images enter through the trunk's own patch embedding; an ECG becomes tokens of ``patch`` samples (a strided
convolution over the leads) and an ICU stay one token per hour (a linear map of its values and mask), each
with learned positions, behind the trunk's class token. Each distinct signal or series shape has its own
tokenizer (named by kind and shape). So a task-incremental stream across modalities
trains one set of transformer blocks, which is where forgetting happens.

A training batch holds one *part* per experience it draws from (replay and joint training mix
experiences whose inputs cannot be stacked): ``{"parts": [{"experience", "head", "inputs", "y"}, ...]}``,
each optionally with a ``weight``.
The loss is the mean over every example of every part; the outputs also carry each part's features and
logits, which strategies' hooks read (LwF, DER++).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfm.continual.stream import Experience, Stream, tokenizer_name
from medfm.models.encoders import create_encoder
from medfm.seeding import seeded


class SignalTokens(nn.Module):
    """``[B, leads, T]`` -> ``[B, T / patch, dim]``: non-overlapping windows embedded, positions added."""

    def __init__(self, leads: int, length: int, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv1d(leads, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, length // patch, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).transpose(1, 2) + self.pos


class SeriesTokens(nn.Module):
    """``[B, hours, features]`` -> ``[B, hours, dim]``: one token per hour, positions added."""

    def __init__(self, hours: int, features: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(features, dim)
        self.pos = nn.Parameter(torch.zeros(1, hours, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.pos


class ContinualModel(nn.Module):
    def __init__(self, trunk: nn.Module, tokenizers: dict[str, nn.Module], heads: dict[str, nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.tokenizers = nn.ModuleDict(tokenizers)
        self.heads = nn.ModuleDict(heads)
        self.multilabel: dict[str, bool] = {}

    def tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "image" in inputs:
            return self.trunk.tokenize(inputs["image"])
        kind = next(k for k in ("signal", "series") if k in inputs)
        tokens = self.tokenizers[tokenizer_name(kind, tuple(inputs[kind].shape[1:]))](inputs[kind])
        prefix = self.trunk.cls_token.expand(len(tokens), -1, -1)
        if not self.trunk.no_embed_class:  # the class token's own position embedding, as for images
            prefix = prefix + self.trunk.pos_embed[:, :1]
        return self.trunk.norm_pre(torch.cat([prefix, tokens], dim=1))

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        encoded = self.trunk.encode_tokens(self.tokens(inputs))
        return self.trunk.forward_head(encoded, pre_logits=True)

    def logits(self, inputs: dict[str, torch.Tensor], head: str) -> torch.Tensor:
        return self.heads[head](self.features(inputs))

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        parts = batch["parts"]
        total = sum(len(part["y"]) for part in parts)
        loss = torch.zeros(())
        features, logits = [], []
        for part in parts:
            feature = self.features(part["inputs"])
            logit = self.heads[part["head"]](feature)
            weight = part.get("weight", 1.0)  # DER++ weighs the labels of remembered examples
            loss = loss + weight * task_loss(logit, part["y"], self.multilabel[part["head"]], "sum") / total
            features.append(feature)
            logits.append(logit)
        return {"loss": loss, "task_loss": loss.detach(), "features": features, "logits": logits}


def task_loss(
    logits: torch.Tensor, y: torch.Tensor, multilabel: bool, reduction: str = "mean"
) -> torch.Tensor:
    if multilabel:
        per = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(dim=1)
        return per.sum() if reduction == "sum" else per.mean()
    return F.cross_entropy(logits, y, reduction=reduction)


def build_model(stream: Stream, config_signal_patch: int, seed: int) -> ContinualModel:
    """The trunk (the bundle's weights, or random for a registered name), tokenizers and heads, seeded."""
    with seeded(seed):
        source = stream.trunk
        weights = source.path if source.path is not None else source.name
        trunk = create_encoder(weights, in_chans=source.in_chans)
        dim = int(trunk.embed_dim)
        tokenizers: dict[str, nn.Module] = {}
        for name, (kind, shape) in stream.signatures().items():
            if kind == "signal":
                leads, length = shape
                tokenizers[name] = SignalTokens(leads, length, config_signal_patch, dim)
            else:
                hours, features = shape
                tokenizers[name] = SeriesTokens(hours, features, dim)
        heads = {name: nn.Linear(dim, len(head.classes)) for name, head in stream.heads.items()}
        model = ContinualModel(trunk, tokenizers, heads)
        model.multilabel = {name: head.multilabel for name, head in stream.heads.items()}
        return model


@torch.no_grad()
def split_logits(
    model: ContinualModel, experience: Experience, split: str, batch_size: int = 256
) -> torch.Tensor:
    """The logits of the experience's head on one of its splits, in evaluation mode, on the CPU."""
    training = model.training
    model.eval()
    data = experience.splits[split]
    device = next(model.parameters()).device
    out = [torch.zeros(0, model.heads[experience.head].out_features)]  # an empty split gives [0, outputs]
    for start in range(0, len(data), batch_size):
        inputs = {k: v[start : start + batch_size].to(device) for k, v in data.inputs.items()}
        out.append(model.logits(inputs, experience.head).float().cpu())
    model.train(training)
    return torch.cat(out)
