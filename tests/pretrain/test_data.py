import pandas as pd
import pytest
import torch

from medfm.data.shards import read_picture
from medfm.errors import DataError
from medfm.pretrain.data import CorpusImages


def identity(image, generator):
    return {"image": image, "draw": torch.rand(1, generator=generator)}


def test_pictures_match_the_catalog_and_views_follow_the_seed(tiny_corpus):
    images = CorpusImages(tiny_corpus, identity)
    catalog = pd.read_parquet(tiny_corpus / "catalog.parquet")
    train = catalog[catalog["split"] == "train"]
    assert len(images) == len(train)
    row = train.iloc[3]
    stored = read_picture(tiny_corpus, row["shard"], row["png_offset"], row["png_size"])
    torch.testing.assert_close(images.read(3), torch.from_numpy(stored).float() / 255)
    assert torch.equal(images[(3, 11)]["draw"], images[(3, 11)]["draw"])
    assert not torch.equal(images[(3, 11)]["draw"], images[(3, 12)]["draw"])


def test_filters_and_fraction(tiny_corpus):
    xray = CorpusImages(tiny_corpus, identity, modalities=["xray"])
    assert set(xray.counts) == {"xray"}
    half = CorpusImages(tiny_corpus, identity, fraction=0.5)
    assert len(half) == round(0.5 * len(CorpusImages(tiny_corpus, identity)))
    with pytest.raises(DataError, match="no modality"):
        CorpusImages(tiny_corpus, identity, modalities=["ultrasound"])
    with pytest.raises(DataError, match="fraction"):
        CorpusImages(tiny_corpus, identity, fraction=0)


def test_not_a_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="medfm data build"):
        CorpusImages(tmp_path, identity)
