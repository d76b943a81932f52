"""Read a built corpus from every rank of a DDP job: each rank streams its own shards.

    torchrun --nproc_per_node=2 examples/stream_ddp.py corpora/medfm --out keys.json

Rank 0 writes which sample keys each rank saw (the test suite checks that no key is seen twice).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from medfm.data.shards import StreamingCorpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    dataset = StreamingCorpus(args.corpus, args.split, channels=1, shuffle=100, seed=0)
    loader = DataLoader(
        dataset,
        batch_size=8,
        num_workers=args.workers,
        collate_fn=lambda batch: [sample["meta"]["key"] for sample in batch],
    )
    keys = [key for batch in loader for key in batch]
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, keys)
    if dist.get_rank() == 0 and args.out:
        shards = [dataset.rank_shards(r) for r in range(dist.get_world_size())]
        with open(args.out, "w") as handle:
            json.dump({"keys": gathered, "shards": shards, "per_rank": dataset.samples_per_rank()}, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
