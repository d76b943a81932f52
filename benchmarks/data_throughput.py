"""Time per image of the corpus build and the streaming reader, beside a plain PIL + numpy loop.

    MEDFM_DATA_ROOT=../shared/data python benchmarks/data_throughput.py \
        --config configs/data/all-image-sources.yaml --rounds 7

The JPEG/PNG folder sources of ``--config`` are measured four ways, each once per round, in alternating
rounds (``rounds.py``: the plain loop first; at least 7):

1. ``plain PIL + numpy loop`` (the reference): open the same files with PIL, convert to grey, resize to
   the corpus size and make a numpy array (the work a hand-written script would do, without slicing,
   hashing, de-duplication, splits or shards);
2. ``build: image-file sources``: :func:`medfm.data.corpus.build_corpus` of those sources (pictures
   produced, before de-duplication);
3. ``reader: StreamingCorpus, 0 / 2 workers``: every split of the corpus just built, through a DataLoader.

The table prints each side's median seconds per image over rounds with its spread, the per-round time
ratio to the plain loop with its interval and verdict (parity, faster or slower), and images per second
at the median; the JSON goes to ``benchmarks/results/data_throughput-cpu.json``. The build of every
source (slices, DICOM, NIfTI), which has no plain counterpart here, reports its own time in the corpus's
``summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medfm.config import load_config
from medfm.data.corpus import CorpusConfig, build_corpus, resolve_root
from medfm.data.shards import StreamingCorpus
from medfm.errors import ConfigError
from rounds import add_rounds_argument, alternate, summarise, table, write_record

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
FILE_ADAPTERS = {"image_folder", "pediatric_pneumonia_xray", "idrid_fundus", "vqa_rad"}


def per_image(images: int, seconds: float) -> dict:
    return {"seconds": seconds / images, "images": images, "total_seconds": seconds}


def plain_loop(files: list[Path], size: int) -> dict:
    started = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
    return per_image(len(files), time.perf_counter() - started)


def build(config: CorpusConfig) -> dict:
    started = time.perf_counter()
    summary = build_corpus(config)
    return per_image(summary["images_before_dedup"], time.perf_counter() - started)


def read_corpus(corpus: Path, workers: int) -> dict:
    count = 0
    started = time.perf_counter()
    for split in ("train", "val", "test"):
        dataset = StreamingCorpus(corpus, split, shuffle=0)
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=lambda batch: len(batch))
        count += sum(loader)
    return per_image(count, time.perf_counter() - started)


def file_sources(config: CorpusConfig, output: Path) -> tuple[CorpusConfig, list[Path]]:
    """The config cut to its image-file sources, and those sources' files."""
    sources = [s for s in config.sources if s.adapter in FILE_ADAPTERS]
    if not sources:
        raise ConfigError(f"the corpus config has no image-file source ({', '.join(sorted(FILE_ADAPTERS))})")
    files = sorted(
        p
        for s in sources
        for p in resolve_root(s, config.data_root).rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
    )
    return dataclasses.replace(config, sources=sources, output=str(output)), files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/data/all-image-sources.yaml")
    add_rounds_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_throughput-cpu.json"))
    parser.add_argument("--workdir", default=None, help="where to build (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medfm-bench-"))
    config, files = file_sources(load_config(CorpusConfig, args.config), workdir / "files")
    corpus = Path(config.output)
    sides = {  # in this order: each round's readers read the corpus its build just wrote
        "plain PIL + numpy loop": lambda: plain_loop(files, config.image_size),
        "build: image-file sources (medfm)": lambda: build(config),
        "reader: StreamingCorpus, 0 workers": lambda: read_corpus(corpus, 0),
        "reader: StreamingCorpus, 2 workers": lambda: read_corpus(corpus, 2),
    }
    summary = summarise(alternate(sides, args.rounds))
    print(table(summary, "seconds per image"))
    rates = {name: round(1 / s["median"], 1) for name, s in summary["seconds"].items()}
    for name, rate in rates.items():
        print(f"{name:<36} {rate:>10.1f} images/s")
    write_record(
        args.out,
        "data_throughput",
        vars(args),
        summary,
        image_size=config.image_size,
        build_workers=config.workers,
        images_per_second=rates,
    )


if __name__ == "__main__":
    main()
