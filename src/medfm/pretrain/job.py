"""``medfm pretrain``: build the encoder and method, read the corpus, train, and leave a bundle behind.

Under ``torchrun`` every rank runs this same function; rank 0 writes the run record, metrics, figures and
the bundle. Run twice with the same output folder, it resumes from the latest checkpoint there.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfm.config import load_config
from medfm.data.shards import CATALOG
from medfm.engine.checkpoint import STATE, latest_checkpoint
from medfm.engine.distributed import cleanup_distributed, setup_distributed
from medfm.engine.trainer import Trainer
from medfm.errors import DataError
from medfm.log import get_logger
from medfm.pretrain.base import PretrainMethod
from medfm.pretrain.build import build_method
from medfm.pretrain.config import PretrainConfig
from medfm.pretrain.data import CorpusImages
from medfm.runs import Run, read_metrics

log = get_logger("pretrain")


def run_pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train ``config``; return the last logged metrics. Writes checkpoints, metrics, figures and a bundle."""
    dist = setup_distributed(config.train.device)
    try:
        method = build_method(config)
        data = config.data
        dataset = CorpusImages(
            data.corpus,
            method.views(),
            split=data.split,
            modalities=data.modalities,
            sources=data.sources,
            fraction=data.fraction,
            seed=config.train.seed,
        )
        method.check_schedule(config.train.steps, steps_per_epoch(len(dataset), config, dist.world_size))
        output = Path(config.output)
        checkpoint = latest_checkpoint(output / "checkpoints") if config.resume else None
        if not config.resume and dist.is_main and (output / "checkpoints").is_dir():
            # Starting over: older checkpoints would otherwise be taken for this run's on a later resume.
            log.warning("resume=false: removing the earlier checkpoints in %s", output / "checkpoints")
            shutil.rmtree(output / "checkpoints")
        resume_step = json.loads((checkpoint / STATE).read_text())["step"] if checkpoint else None
        run = None
        if dist.is_main:
            run = Run.create(
                output,
                config,
                seeds={"seed": config.train.seed},
                data={"corpus": data.corpus, "catalog": Path(data.corpus) / CATALOG},
                resume_step=resume_step,
            )
            log.info(
                "%s on %s: %d pictures (%s), %d rank(s), %d images per step",
                config.method,
                config.encoder,
                len(dataset),
                ", ".join(f"{k} {v}" for k, v in sorted(dataset.counts.items())),
                dist.world_size,
                config.train.batch_size * config.train.accum_steps * dist.world_size,
            )
        trainer = Trainer(
            method, dataset, config.train, output, hooks=method.hooks(), run=run, dist_info=dist
        )
        if checkpoint is not None:
            trainer.resume(checkpoint)
        last = trainer.fit()
        if not last and dist.is_main:  # a finished run started again: report what it logged
            logged = [r for r in read_metrics(output / "metrics.jsonl") if "loss" in r]
            last = logged[-1] if logged else {}
        if dist.is_main:
            from medfm.pretrain.export import export_bundle
            from medfm.pretrain.figures import plot_loss_curve, plot_reconstructions

            title = f"{config.method} {config.encoder}"
            plot_loss_curve(output / "metrics.jsonl", output / "loss.png", title=title)
            if hasattr(method, "reconstruct"):
                examples = held_out_views(config, method)
                plot_reconstructions(
                    method, examples.to(trainer.device), output / "reconstructions.png", title
                )
            bundle = export_bundle(output, output / "bundle")
            run.finish(**last, steps=trainer.step, bundle=str(bundle))
        return last
    finally:
        cleanup_distributed()


def steps_per_epoch(n_images: int, config: PretrainConfig, world_size: int) -> float:
    """Optimiser steps in one pass over ``n_images`` (the engine's sampler keeps whole batches only)."""
    batches = n_images // (config.train.batch_size * world_size)
    return batches / config.train.accum_steps


def held_out_views(config: PretrainConfig, method: PretrainMethod, count: int = 8) -> torch.Tensor:
    """``count`` pictures of the corpus's validation split (training split if it has none), taking the
    modalities in turn, as the method's views with fixed seeds: the examples of the figures."""
    try:
        images = CorpusImages(config.data.corpus, method.views(), split="val")
    except DataError:
        images = CorpusImages(config.data.corpus, method.views(), split=config.data.split)
    order = np.random.default_rng(0).permutation(len(images))
    modalities = images.modality[order]
    picked = [order[modalities == m][:count] for m in sorted(set(modalities))]
    interleaved = [int(i) for group in itertools.zip_longest(*picked) for i in group if i is not None]
    return torch.stack([images[(i, i)]["image"] for i in interleaved[:count]])


def load_pretrain_config(path: str | Path | None, overrides: list[str]) -> PretrainConfig:
    return load_config(PretrainConfig, path, overrides)
