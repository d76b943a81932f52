"""The training loop: one engine for pretraining now, and for every later stage that trains a model.

The model is any ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": ..., **logs}``; scalar logs are
averaged into the metrics, other outputs (logits a hook needs) are only handed to the hooks. The trainer adds
what a long run needs: AdamW with cosine learning-rate and weight-decay schedules, gradient accumulation,
clipping, bf16 autocast, optional ``torch.compile``, an EMA copy, DDP under ``torchrun``, named hooks,
JSONL metrics, a progress bar in images per second, and checkpoints that resume the run exactly (weights,
optimiser, EMA, generator states and the position in the data order).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from medfm.engine.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    set_rng_state,
    staging_dir,
    write_checkpoint,
    write_rank_rng,
)
from medfm.engine.data import ResumableSampler
from medfm.engine.distributed import Dist, all_reduce_mean, setup_distributed
from medfm.engine.hooks import Hook, restore_hook_states, split_hook_states
from medfm.engine.schedules import cosine_schedule
from medfm.errors import ConfigError, MedfmError
from medfm.log import get_logger, progress
from medfm.runs import Run

log = get_logger("engine")

# Parameters that are never decayed, whatever their shape (timm's and MAE's convention).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token", "dist_token")


@dataclass
class TrainConfig:
    steps: int = 1000  # optimiser steps
    batch_size: int = 64  # per rank and micro-batch; images per step = batch_size * accum_steps * ranks
    accum_steps: int = 1
    lr: float = 1.5e-4  # peak learning rate, reached after warm-up
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05  # cosine from weight_decay to this (DINOv2 goes 0.04 -> 0.2)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 0.0  # max global gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    ema_decay: float = 0.0  # 0 turns the EMA copy off
    log_every: int = 10
    checkpoint_every: int = 200  # 0 saves only at the end
    keep_checkpoints: int = 2
    workers: int = 2
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        for key in ("steps", "batch_size", "accum_steps", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.workers < 0 or self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ConfigError("workers, warmup_steps and checkpoint_every must be >= 0")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: decayed weights, and biases / norms / embeddings without decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES
        (no_decay if plain else decay).append(param)
    return [
        {"params": decay, "apply_weight_decay": True},
        {"params": no_decay, "apply_weight_decay": False, "weight_decay": 0.0},
    ]


def loggable(value: Any) -> bool:
    """Scalars (numbers, 0-d tensors) are logged; anything else in a model's outputs is not."""
    return isinstance(value, int | float) or (torch.is_tensor(value) and value.ndim == 0)


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Train ``model`` on ``dataset`` (map-style, indexed by ``(index, seed)`` pairs) into ``output``.

    ``run`` (rank 0 only) receives the JSONL metrics; ``collate`` builds a batch from samples (default:
    torch's); ``dist_info`` is the process group already joined (default: join the one torchrun describes).
    Images per second count ``batch_size`` images per micro-batch and rank.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        output: str | Path,
        *,
        hooks: Sequence[Hook] = (),
        run: Run | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
        dist_info: Dist | None = None,
    ):
        config.check()
        self.config, self.dataset, self.hooks = config, dataset, list(hooks)
        self.run, self.collate = run, collate
        self.dist = dist_info or setup_distributed(config.device)
        self.output = Path(output)
        self.checkpoints = self.output / "checkpoints"
        self.device = self.dist.device
        self.dtype = self._autocast_dtype()
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model),
            lr=config.lr,
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",  # one kernel for all parameters on GPUs
        )
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay) if config.ema_decay > 0 else None
        forward: nn.Module = self.model
        if self.dist.world_size > 1:
            forward = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # methods keep their own buffers in sync (e.g. DINO's centres)
            )
        self.forward_model = torch.compile(forward) if config.compile else forward
        self.sampler = ResumableSampler(
            len(dataset),
            config.batch_size,
            seed=config.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        seed_everything(config.seed + self.dist.rank)

    @property
    def images_per_step(self) -> int:
        return self.config.batch_size * self.config.accum_steps * self.dist.world_size

    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        return torch.bfloat16 if precision == "bf16" else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ---- resuming -------------------------------------------------------------------------------

    def resume(self, directory: str | Path | None = None) -> int:
        """Load a checkpoint (default: the latest under ``output/checkpoints``); return its step (0: none)."""
        path = Path(directory) if directory else latest_checkpoint(self.checkpoints)
        if path is None:
            return 0
        saved = read_checkpoint(path, self.dist.rank)
        state = saved["state"]
        for key, now in (("world_size", self.dist.world_size), ("batch_size", self.config.batch_size)):
            if state[key] != now:
                raise MedfmError(
                    f"checkpoint {path} was written with {key}={state[key]}, this run has {now}; the data "
                    "position only carries over with the same value"
                )
        try:
            self.model.load_state_dict(saved["model"])
        except RuntimeError as err:
            raise MedfmError(
                f"checkpoint {path} does not fit this model: {str(err).splitlines()[0]}"
            ) from None
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.ema is not None and saved["ema"] is not None:
            self.ema.module.load_state_dict(saved["ema"])
        if saved["rng"] is None:
            log.warning("checkpoint %s has no generator state for rank %d; reseeding", path, self.dist.rank)
        else:
            set_rng_state(*saved["rng"])
        restore_hook_states(self.hooks, *saved["hooks"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if state["steps"] != self.config.steps:
            log.warning("resuming a %d-step schedule as a %d-step one", state["steps"], self.config.steps)
        log.info("resumed from %s (step %d, epoch %d)", path, self.step, self.epoch)
        return self.step

    def save_checkpoint(self) -> Path:
        directory = checkpoint_dir(self.checkpoints, self.step)
        staging = staging_dir(directory)
        if self.dist.is_main:
            staging.mkdir(parents=True, exist_ok=True)
        self._barrier()
        write_rank_rng(staging, self.dist.rank)
        self._barrier()
        if self.dist.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "steps": self.config.steps,
                "world_size": self.dist.world_size,
                "batch_size": self.config.batch_size,
                "accum_steps": self.config.accum_steps,
            }
            write_checkpoint(
                staging,
                directory,
                model=self.model.state_dict(),
                optimizer=self.optimizer,
                state=state,
                ema=self.ema.module.state_dict() if self.ema is not None else None,
                hooks=split_hook_states(self.hooks),
            )
            prune_checkpoints(self.checkpoints, self.config.keep_checkpoints)
            for hook in self.hooks:
                hook.on_checkpoint(self, directory)
        self._barrier()
        return directory

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            dist.barrier()

    # ---- training -------------------------------------------------------------------------------

    def batches(self) -> Iterator[Any]:
        """Batches without end, from the current data position; keeps ``epoch``/``batch_in_epoch`` current."""
        config = self.config
        loader = DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.workers,
            collate_fn=self.collate,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            # Its own generator, so starting a loader never draws from the global one (resumed runs
            # start loaders at other moments than uninterrupted ones).
            generator=torch.Generator().manual_seed(config.seed),
            # Workers outlive an epoch: small data sets would otherwise restart them every few steps. The
            # sampler runs in this process, so each epoch still starts from the position set here.
            persistent_workers=config.workers > 0,
        )
        while True:
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            for batch in loader:
                self.batch_in_epoch += 1
                yield to_device(batch, self.device)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _schedules(self) -> tuple[float, float]:
        c = self.config
        lr = cosine_schedule(self.step, c.steps, c.lr, c.min_lr, c.warmup_steps)
        wd = cosine_schedule(self.step, c.steps, c.weight_decay, c.weight_decay_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("apply_weight_decay"):
                group["weight_decay"] = wd
        return lr, wd

    def train_step(self, batches: Iterator[Any]) -> dict[str, torch.Tensor]:
        """One optimiser step over ``accum_steps`` micro-batches; returns detached logs (means)."""
        accum = self.config.accum_steps
        sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = next(batches)
            for hook in self.hooks:
                batch = hook.on_batch(self, batch)
            last = micro == accum - 1
            no_sync = getattr(self.forward_model, "no_sync", None)
            sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
            with sync:
                with self._autocast():
                    outputs = self.forward_model(batch)
                for hook in self.hooks:
                    outputs = hook.on_outputs(self, batch, outputs)
                (outputs["loss"] / accum).backward()
            for key, value in outputs.items():
                if not loggable(value):  # e.g. logits a hook reads: passed on, not logged
                    continue
                value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
                sums[key] = sums[key] + value if key in sums else value
        for hook in self.hooks:
            hook.after_backward(self)
        lr, wd = self._schedules()
        logs = {key: value / accum for key, value in sums.items()}
        if self.config.clip_grad > 0:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        after_step = getattr(self.model, "after_step", None)
        if after_step is not None:
            after_step(self.step, self.config.steps)
        self.step += 1
        for hook in self.hooks:
            hook.after_step(self)
        logs["lr"], logs["weight_decay"] = torch.tensor(lr), torch.tensor(wd)
        return logs

    def fit(self) -> dict[str, Any]:
        """Train until ``config.steps``; checkpoint every ``checkpoint_every`` steps and at the end."""
        config = self.config
        if self.step >= config.steps:
            log.info("nothing to train: the run is already at step %d of %d", self.step, config.steps)
            return {}
        self.model.train()
        for hook in self.hooks:
            hook.on_fit_start(self)
        batches = self.batches()
        window: dict[str, torch.Tensor] = {}
        window_steps, window_start = 0, time.perf_counter()
        last: dict[str, Any] = {}
        steps = range(self.step, config.steps)
        if self.dist.is_main:
            steps = progress(
                steps, "train", total=config.steps, unit="img", start=self.step, scale=self.images_per_step
            )
        for _ in steps:
            logs = self.train_step(batches)
            for key, value in logs.items():
                window[key] = window[key] + value if key in window else value
            window_steps += 1
            save = self.step == config.steps or (
                config.checkpoint_every and self.step % config.checkpoint_every == 0
            )
            if self.step % config.log_every == 0 or save:
                elapsed = time.perf_counter() - window_start
                last = self._log_window(window, window_steps, elapsed)
                window, window_steps, window_start = {}, 0, time.perf_counter()
            if save:
                path = self.save_checkpoint()
                window_start = time.perf_counter()  # saving is not training time
                if self.dist.is_main:
                    log.info(
                        "step %d/%d: loss %.4f, %.1f images/s; checkpoint %s",
                        self.step,
                        config.steps,
                        last["loss"],
                        last["images_per_s"],
                        path.name,
                    )
        batches.close()
        for hook in self.hooks:
            hook.on_fit_end(self)
        return last

    def _log_window(self, window: dict[str, torch.Tensor], steps: int, seconds: float) -> dict[str, Any]:
        record: dict[str, Any] = {"epoch": self.epoch}
        keys = sorted(window)  # the same order on every rank
        # One all-reduce per log line: each rank saw its own samples, the record is their mean.
        means = all_reduce_mean(torch.stack([window[k].float().reshape(()) for k in keys]).to(self.device))
        for key, value in zip(keys, means.tolist()):
            record[key] = value / steps
        if not math.isfinite(record["loss"]):
            raise MedfmError(
                f"the loss became {record['loss']} before step {self.step}; lower lr or turn on clip_grad "
                f"(latest checkpoint: {latest_checkpoint(self.checkpoints)})"
            )
        record["images_per_s"] = round(steps * self.images_per_step / max(seconds, 1e-9), 2)
        for hook in self.hooks:
            hook.on_log(self, record)
        if self.run is not None and self.dist.is_main:
            self.run.log(step=self.step, **record)
        return record
