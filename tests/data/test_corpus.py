"""Corpus builder on a synthetic source with known duplicates and subjects, plus the real sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfm.data.corpus import CorpusConfig, SourceSpec, build_corpus
from medfm.data.shards import StreamingCorpus
from medfm.data.sources import SOURCES, SourceAdapter, SourceInfo, register_source
from medfm.errors import ConfigError


def _pattern(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (1, 6, 6), dtype=np.uint8)
    return np.kron(coarse, np.ones((1, size // 6, size // 6), dtype=np.uint8))


if "synthetic_test" not in SOURCES:

    @register_source("synthetic_test")
    class SyntheticSource(SourceAdapter):
        """8 subjects x 3 distinct images, plus one exact copy, one near copy and one 3D volume."""

        info = SourceInfo(kind="image", modality="xray", anatomy="chest", license="CC0")

        def __iter__(self):
            for subject in range(8):
                for view in range(3):
                    yield {
                        "image": _pattern(subject * 10 + view),
                        "meta": self.meta(sample_id=f"s{subject}-v{view}", subject_id=f"p{subject}"),
                    }
            yield {"image": _pattern(0), "meta": self.meta(sample_id="copy", subject_id="p99")}
            near = _pattern(11).astype(np.int16)
            near[0, 0, 0] = 255 - near[0, 0, 0]
            yield {"image": near.astype(np.uint8), "meta": self.meta(sample_id="near", subject_id="p98")}
            volume = np.stack([_pattern(500 + d)[0] for d in range(5)])[None].astype(np.float32) / 255
            yield {
                "image": volume,
                "meta": self.meta(
                    sample_id="vol",
                    subject_id="p97",
                    modality="ct",
                    axis_names=["axial", "coronal", "sagittal"],
                ),
            }


def _config(tmp_path: Path, **overrides) -> CorpusConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = SourceSpec(adapter="synthetic_test", root=str(tmp_path))
    values = {
        "output": str(tmp_path / "corpus"),
        "sources": [spec],
        "image_size": 32,
        "workers": 1,
        "shard_size": 8,
        "min_slice_foreground": 0.0,
    }
    return CorpusConfig(**(values | overrides))


def test_build_removes_duplicates_and_keeps_subjects_in_one_split(tmp_path):
    summary = build_corpus(_config(tmp_path))
    assert summary["images_before_dedup"] == 8 * 3 + 2 + 5
    assert summary["exact_duplicates"] == 1
    assert summary["near_duplicates"] == 1
    assert summary["images"] == 8 * 3 + 5
    assert summary["subjects_in_several_splits"] == 0
    catalog = pd.read_parquet(tmp_path / "corpus" / "catalog.parquet")
    assert (catalog.groupby("subject_key")["split"].nunique() == 1).all()
    assert set(catalog["modality"]) == {"xray", "ct"}
    assert sorted(catalog.loc[catalog["sample_id"] == "vol", "slice_index"]) == [0, 1, 2, 3, 4]
    dropped = pd.read_parquet(tmp_path / "corpus" / "duplicates.parquet")
    assert dict(zip(dropped["sample_id"], dropped["duplicate_of"])) == {"copy": "s0-v0", "near": "s1-v1"}
    for name in ("config.yaml", "metrics.jsonl", "provenance.json", "summary.json", "sources.json"):
        assert (tmp_path / "corpus" / name).is_file(), name


def test_near_duplicates_kept_when_disabled(tmp_path):
    summary = build_corpus(_config(tmp_path, near_duplicate_bits=-1))
    assert summary["near_duplicates"] == 0 and summary["exact_duplicates"] == 1


def test_shards_hold_exactly_the_catalog(tmp_path):
    build_corpus(_config(tmp_path))
    root = tmp_path / "corpus"
    catalog = pd.read_parquet(root / "catalog.parquet")
    seen = []
    for split in catalog["split"].unique():
        for sample in StreamingCorpus(root, split, shuffle=0):
            assert sample["image"].shape == (1, 32, 32)
            assert 0.0 <= float(sample["image"].min()) <= float(sample["image"].max()) <= 1.0
            seen.append(sample["meta"]["key"])
    assert sorted(seen) == sorted(catalog["key"])


def test_catalog_offsets_fetch_the_same_picture_as_streaming(tmp_path):
    from medfm.data.shards import read_picture

    build_corpus(_config(tmp_path))
    root = tmp_path / "corpus"
    catalog = pd.read_parquet(root / "catalog.parquet").set_index("key")
    for sample in StreamingCorpus(root, "train", shuffle=0):
        row = catalog.loc[sample["meta"]["key"]]
        picture = read_picture(root, row["shard"], row["png_offset"], row["png_size"])
        assert np.array_equal(picture, (sample["image"].numpy() * 255).round().astype(np.uint8))


def test_ranks_read_distinct_shards_and_equal_counts(tmp_path):
    build_corpus(_config(tmp_path, splits={"train": 1.0}, shard_size=4))
    root = tmp_path / "corpus"
    readers = [StreamingCorpus(root, "train", rank=r, world_size=2, shuffle=0) for r in range(2)]
    assert not set(readers[0].rank_shards()) & set(readers[1].rank_shards())
    keys = [[s["meta"]["key"] for s in reader] for reader in readers]
    assert len(keys[0]) == len(keys[1]) == readers[0].samples_per_rank()
    assert not set(keys[0]) & set(keys[1])


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="sum to 1"):
        build_corpus(_config(tmp_path, splits={"train": 0.5}))
    with pytest.raises(ConfigError, match="no option"):
        build_corpus(
            _config(
                tmp_path,
                sources=[SourceSpec(adapter="synthetic_test", root=str(tmp_path), options={"bogus": 1})],
            )
        )


def test_summary_is_json(tmp_path):
    build_corpus(_config(tmp_path))
    summary = json.loads((tmp_path / "corpus" / "summary.json").read_text())
    assert summary["sources"] == 1 and summary["modalities"] == 2


@pytest.mark.multiprocess
def test_torchrun_ranks_stream_distinct_samples(tmp_path):
    import subprocess
    import sys

    build_corpus(_config(tmp_path, splits={"train": 1.0}, shard_size=4))
    script = Path(__file__).parents[2] / "examples" / "stream_ddp.py"
    out = tmp_path / "keys.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path / "corpus"),
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    result = json.loads(out.read_text())
    keys = result["keys"]
    assert len(keys[0]) == len(keys[1]) == result["per_rank"] > 0
    assert len(set(keys[0])) == len(keys[0]) and len(set(keys[1])) == len(keys[1])
    assert not set(keys[0]) & set(keys[1])
    assert not set(result["shards"][0]) & set(result["shards"][1])


# The parent runs a torch op on its thread pool first, as a test session or notebook has before a build;
# a forked worker inherits that pool mid-state and hangs in its first torch op (the thumbnails' mean).
AFTER_TORCH_RAN = """
import numpy as np, torch
from medfm.data.corpus import encoding_pool
from medfm.data.links import thumbnails
torch.rand(3, 3000, 3000).mean(dim=0)
pool = encoding_pool(2)
print(pool.submit(thumbnails, np.zeros((1, 2000, 2000), np.uint8)).result(timeout=120).shape)
pool.shutdown()
"""


@pytest.mark.multiprocess
def test_encoding_workers_run_torch_after_the_parent_did():
    import subprocess
    import sys

    command = [sys.executable, "-c", AFTER_TORCH_RAN]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(13, 784)"


def test_worker_quotas_are_proportional_and_capped():
    from medfm.data.shards import _allocate

    assert _allocate(10, [4, 8]) == [3, 7]
    assert _allocate(12, [4, 8]) == [4, 8]
    assert _allocate(5, [0, 7]) == [0, 5]
    assert sum(_allocate(7, [3, 3, 3])) == 7


def test_worker_processes_give_the_same_corpus(tmp_path):
    one = build_corpus(_config(tmp_path / "a", output=str(tmp_path / "one"), workers=1))
    two = build_corpus(_config(tmp_path / "a", output=str(tmp_path / "two"), workers=2))
    columns = ["key", "sample_id", "split", "shard", "sha256", "phash"]
    first = pd.read_parquet(tmp_path / "one" / "catalog.parquet", columns=columns)
    second = pd.read_parquet(tmp_path / "two" / "catalog.parquet", columns=columns)
    pd.testing.assert_frame_equal(first, second)
    assert one["images"] == two["images"]


def test_output_that_is_not_a_corpus_is_never_deleted(tmp_path):
    precious = tmp_path / "corpus" / "notes.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me")
    with pytest.raises(ConfigError, match="not a corpus"):
        build_corpus(_config(tmp_path))
    assert precious.read_text() == "keep me"
    precious.unlink()
    build_corpus(_config(tmp_path))  # an empty folder, then an earlier corpus, may be replaced
    build_corpus(_config(tmp_path))
