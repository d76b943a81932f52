"""Small synthetic streams for strategy and learner tests: random inputs of the three kinds, labels a
fixed function of the inputs, so a few steps of training move the scores."""

from __future__ import annotations

import numpy as np
import torch

from medfm.continual.stream import SPLITS, Experience, Head, Stream
from medfm.evaluate.encoders import EncoderSource
from medfm.evaluate.inputs import Split

TRUNK = EncoderSource(label="test_vit", name="test_vit", path=None, in_chans=1, img_size=32)
SHAPES = {"image": (1, 32, 32), "signal": (1, 200), "series": (6, 4)}


def split(kind: str, count: int, classes: int, seed: int, offset: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, *SHAPES[kind], generator=generator)
    score = x.flatten(1)[:, :8].sum(1)  # the label: which band of this score an example falls in
    edges = torch.quantile(score, torch.linspace(0, 1, classes + 1)[1:-1])
    y = torch.bucketize(score, edges) + offset
    subjects = np.array([f"s{seed}-{i // 2}" for i in range(count)], dtype=object)  # two examples each
    return Split({kind: x}, y, subjects)


def experience(index: int, kind: str, head: str, classes: tuple[str, ...], offset: int = 0, count: int = 48):
    splits = {
        name: split(kind, count if name == "train" else 24, len(classes), 100 * index + k, offset)
        for k, name in enumerate(("train", "val", "test"))
    }
    return Experience(index, f"e{index}-{kind}", f"task{index}", kind, head, classes, splits)


def task_stream() -> Stream:
    """Three experiences, three modalities, one head each."""
    experiences = [
        experience(0, "image", "e0-image", ("a", "b")),
        experience(1, "signal", "e1-signal", ("c", "d", "e")),
        experience(2, "series", "e2-series", ("f", "g")),
    ]
    heads = {e.head: Head(e.head, e.classes, False) for e in experiences}
    return Stream("task", experiences, heads, TRUNK)


def class_stream() -> Stream:
    """Two image experiences with two new classes each on one shared head."""
    experiences = [
        experience(0, "image", "shared", ("a", "b")),
        experience(1, "image", "shared", ("c", "d"), offset=2),
    ]
    return Stream("class", experiences, {"shared": Head("shared", ("a", "b", "c", "d"), False)}, TRUNK)


def separable_class_stream() -> Stream:
    """Class-incremental: classes a, b then c, d, each class its own mean intensity (quick to learn), so
    forgetting after the second experience is plain to see."""

    def part(first: int, count: int, seed: int) -> Split:
        generator = torch.Generator().manual_seed(seed)
        y = torch.arange(count) % 2 + first
        x = torch.randn(count, 1, 32, 32, generator=generator) * 0.5 + (y.float() - 1.5).view(-1, 1, 1, 1)
        return Split({"image": x}, y, np.array([f"{seed}-{i}" for i in range(count)], dtype=object))

    experiences = []
    for i, names in enumerate((("a", "b"), ("c", "d"))):
        splits = {s: part(2 * i, 64 if s == "train" else 32, 10 * i + k) for k, s in enumerate(SPLITS)}
        experiences.append(Experience(i, f"classes-{i}", "synthetic", "image", "shared", names, splits))
    return Stream("class", experiences, {"shared": Head("shared", ("a", "b", "c", "d"), False)}, TRUNK)
