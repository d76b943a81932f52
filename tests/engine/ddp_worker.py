"""Run under torchrun by test_ddp.py: train the toy task and record what each rank saw."""

import json
import os
import sys
from pathlib import Path

import torch

from medfm.engine.hooks import Hook
from medfm.engine.trainer import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from toy import ToyData, ToyModel


class SeenIndices(Hook):
    name = "seen"

    def __init__(self):
        self.indices: list[int] = []

    def on_batch(self, trainer, batch):
        self.indices += batch["index"].tolist()
        return batch


def main(out: Path) -> None:
    torch.manual_seed(int(os.environ.get("RANK", 0)))
    seen = SeenIndices()
    config = TrainConfig(steps=6, batch_size=4, lr=0.05, warmup_steps=0, workers=0, checkpoint_every=3)
    trainer = Trainer(ToyModel(), ToyData(64), config, out, hooks=[seen])
    last = trainer.fit()
    weight = trainer.model.linear.weight.detach().flatten().tolist()
    record = {
        "indices": seen.indices,
        "weight": weight,
        "world_size": trainer.dist.world_size,
        "logged_loss": last["loss"],
    }
    (out / f"rank{trainer.dist.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
