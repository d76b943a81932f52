"""Images per second for the corpus build and the streaming reader, beside a plain PIL + numpy loop.

    python benchmarks/data_throughput.py --config configs/data/all-image-sources.yaml --out results.json

Three measurements in one run, on the same machine:

1. the full build of ``--config`` (every source; pictures produced per second, before de-duplication);
2. the build restricted to its JPEG/PNG folder sources, beside a plain loop that opens the same files with
   PIL, converts to grey, resizes to the corpus size and makes a numpy array (the work a hand-written
   script would do, without slicing, hashing, de-duplication, splits or shards);
3. the streaming reader over the built corpus (DataLoader with 0 and 2 workers), beside the plain loop
   reading the original files again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medfm.config import load_config
from medfm.data.corpus import CorpusConfig, build_corpus, resolve_root
from medfm.data.shards import StreamingCorpus

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
FILE_ADAPTERS = {"image_folder", "pediatric_pneumonia_xray", "idrid_fundus", "vqa_rad"}


def plain_loop(files: list[Path], size: int) -> tuple[int, float]:
    started = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
    return len(files), time.perf_counter() - started


def read_corpus(corpus: Path, workers: int) -> tuple[int, float]:
    count = 0
    started = time.perf_counter()
    for split in ("train", "val", "test"):
        dataset = StreamingCorpus(corpus, split, shuffle=0)
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=lambda batch: len(batch))
        count += sum(loader)
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/data/all-image-sources.yaml")
    parser.add_argument("--out", default="benchmarks/data_throughput.json")
    parser.add_argument("--workdir", default=None, help="where to build (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medfm-bench-"))
    config = load_config(CorpusConfig, args.config, [f"output={workdir / 'all'}"])

    rows = []

    def record(name: str, images: int, seconds: float, **extra) -> None:
        rows.append(
            {
                "measure": name,
                "images": images,
                "seconds": round(seconds, 2),
                "images_per_s": round(images / seconds, 1),
                **extra,
            }
        )

    summary = build_corpus(config)
    record(
        "build: all sources (medfm)",
        summary["images_before_dedup"],
        summary["seconds"],
        sources=summary["sources"],
        workers=config.workers,
    )

    file_sources = [s for s in config.sources if s.adapter in FILE_ADAPTERS]
    files_config = dataclasses.replace(config, sources=file_sources, output=str(workdir / "files"))
    files_summary = build_corpus(files_config)
    files = sorted(
        p
        for s in file_sources
        for p in resolve_root(s, config.data_root).rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
    )
    record(
        "build: image-file sources (medfm)",
        files_summary["images_before_dedup"],
        files_summary["seconds"],
        workers=config.workers,
    )
    record("plain PIL + numpy loop, same files", *plain_loop(files, config.image_size), workers=1)

    for workers in (0, 2):
        record(
            f"reader: StreamingCorpus, {workers} workers",
            *read_corpus(workdir / "all", workers),
            workers=workers,
        )
    record("reader baseline: plain PIL loop again", *plain_loop(files, config.image_size), workers=1)

    print(f"\n{'measure':45s} {'images':>8s} {'seconds':>9s} {'images/s':>10s}")
    for row in rows:
        print(f"{row['measure']:45s} {row['images']:8d} {row['seconds']:9.2f} {row['images_per_s']:10.1f}")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "config": args.config,
        "image_size": config.image_size,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
