"""Derived pictures linked to their originals by thumbnail correlation; calibration on known patients."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medfm.data.links import CROPS, false_links, link, thumbnails


def smooth_pictures(n: int, seed: int = 0, height: int = 96, width: int = 120) -> list[np.ndarray]:
    """Random smooth grey pictures (blurred noise): each distinct, like different patients' images."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.normal(size=(n, 1, 12, 15)).astype(np.float32))
    big = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    big = (big - big.amin(dim=(2, 3), keepdim=True)) / (
        big.amax(dim=(2, 3), keepdim=True) - big.amin(dim=(2, 3), keepdim=True)
    )
    return [(p.numpy() * 255).astype(np.uint8) for p in big]


def derive(picture: np.ndarray, width_fraction: float) -> np.ndarray:
    """A centred crop of the full height and part of the width, resized to 28 px (as MedMNIST does)."""
    width = picture.shape[2]
    keep = round(width * width_fraction)
    start = (width - keep) // 2
    crop = Image.fromarray(picture[0, :, start : start + keep])
    return np.asarray(crop.resize((28, 28), Image.BILINEAR))[None]


def test_crops_and_resamples_link_to_their_original_and_strangers_do_not():
    originals = smooth_pictures(60)
    subjects = np.array([f"p{i // 2}" for i in range(60)])  # two pictures per patient
    derived = [derive(originals[i], 0.55 + 0.05 * (i % 7)) for i in range(0, 60, 3)]
    strangers = [derive(p, 0.7) for p in smooth_pictures(10, seed=1)]
    thumbs = np.stack([thumbnails(p) for p in originals])
    links = link(np.stack([thumbnails(p) for p in derived + strangers]), thumbs, subjects)
    assert links.original[:20].tolist() == list(range(0, 60, 3))
    assert not links.linked[20:].any() and not links.ambiguous.any()
    assert thumbs.shape == (60, len(CROPS), 28 * 28) and thumbs.dtype == np.uint8
    assert false_links(thumbs, subjects)["false_links"] == 0


def test_a_picture_shared_by_two_patients_is_an_ambiguous_link():
    originals = smooth_pictures(4)
    originals.append(originals[0].copy())  # the same picture filed under another patient
    subjects = np.array(["a", "b", "c", "d", "e"])
    thumbs = np.stack([thumbnails(p) for p in originals])
    links = link(thumbnails(derive(originals[0], 0.7))[None], thumbs, subjects)
    assert links.linked[0] and links.ambiguous[0]
    assert false_links(thumbs, subjects)["false_links"] >= 2  # the copy is another patient's best match


@pytest.mark.slow
def test_pneumoniamnist_test_images_link_to_the_paediatric_test_images(dataset):
    root = dataset("xray-pediatric-pneumonia-224")
    table = pd.read_csv(root / "labels.csv")
    table = table[table["split"] == "test"]
    # byte-identical files filed under two patients would count as false links: the corpus drops them too
    table = table[
        ~table["path"].map(lambda p: hashlib.sha256((root / p).read_bytes()).hexdigest()).duplicated()
    ]
    originals = np.stack(
        [thumbnails(np.asarray(Image.open(root / p).convert("L"))[None]) for p in table["path"]]
    )
    mnist = np.load(dataset("pneumoniamnist") / "pneumoniamnist.npz")
    derived = np.stack([thumbnails(image[None]) for image in mnist["test_images"]])
    subjects = table["path"].str.extract(r"((?:NORMAL\d*-)?IM-\d+|person\d+)")[0].to_numpy()
    links = link(derived, originals, subjects)
    assert links.linked.mean() > 0.85  # 555 of 624 here (the training splits link at 97 %)
    pneumonia = (table["label"].to_numpy() == "PNEUMONIA")[links.original[links.linked]]
    assert (pneumonia == (mnist["test_labels"][links.linked, 0] == 1)).all()
    assert false_links(originals, subjects)["false_links"] == 0
