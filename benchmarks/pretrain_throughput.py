"""Pretraining step throughput: medfm's engine and method beside a plain timm + hand-written MAE step.

    python benchmarks/pretrain_throughput.py --model vit_tiny_patch8 --image-size 64 --batch 64 --rounds 7
    python benchmarks/pretrain_throughput.py --model vit_base_patch16 --image-size 224 --batch 256 \\
        --device cuda --precision bf16 --compile          # the GPU measurement

Both sides train the same architecture on the same in-memory batch with AdamW:

- ``medfm``: :class:`medfm.engine.trainer.Trainer.train_step` (schedules, hooks, logs) on the registered
  method (``--method mae`` or ``dino``), optionally under ``torch.compile``;
- ``reference``: a timm ``VisionTransformer`` and a minimal MAE written below (MAE only), in a bare
  ``zero_grad / forward / backward / step`` loop, optionally compiled with ``--reference-compile``.

Each side runs in its own child process (so peak memory is its own), once per round, in alternating
rounds (``rounds.py``: reference, medfm, reference, medfm, ...; at least 7); the table reports each side's
median step time with its spread, the per-round time ratio and the verdict (parity, faster or slower)
its interval supports. Throughput is taken at the median step time. TFLOP/s come from
``torch.utils.flop_counter`` on one training step; MFU is that over ``--peak-tflops`` (default: the
dense bf16 peak of known GPUs, none on CPUs).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from itertools import repeat
from pathlib import Path

import torch
from torch import nn

from rounds import add_rounds_argument, alternate, summarise, table, write_record

# Dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


# ---- the reference: timm ViT + a minimal MAE, as a user would write it from the paper -------------------


class ReferenceMAE(nn.Module):
    def __init__(self, model: str, image_size: int, in_chans: int, decoder_dim=128, decoder_depth=2, heads=4):
        super().__init__()
        from timm.models.vision_transformer import Block, VisionTransformer

        from medfm.models.encoders import ENCODERS

        arch = ENCODERS.get(model).arch
        self.encoder = VisionTransformer(img_size=image_size, in_chans=in_chans, num_classes=0, **arch)
        self.patch = arch["patch_size"]
        self.num_patches = (image_size // self.patch) ** 2
        dim = arch["embed_dim"]
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(
            torch.zeros(1, self.num_patches + 1, decoder_dim), requires_grad=False
        )
        self.decoder = nn.Sequential(*[Block(decoder_dim, heads) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * in_chans)

    def patchify(self, x):
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, x, mask_ratio=0.75):
        enc = self.encoder
        tokens = enc.patch_embed(x) + enc.pos_embed[:, 1:]
        b, n, d = tokens.shape
        keep = int(n * (1 - mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        latent = enc.norm(enc.blocks(torch.cat([cls, kept], dim=1)))
        y = self.decoder_embed(latent)
        masks = self.mask_token.expand(b, n - keep, -1)
        y_ = torch.cat([y[:, 1:], masks], dim=1)
        y_ = torch.gather(y_, 1, ids_restore[:, :, None].expand(-1, -1, y.shape[2]))
        y = torch.cat([y[:, :1], y_], dim=1) + self.decoder_pos
        pred = self.decoder_pred(self.decoder_norm(self.decoder(y)))[:, 1:]
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        target = self.patchify(x)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


# ---- one side, in a child process ------------------------------------------------------------------------


def build_medfm(args, device):
    from medfm.engine.trainer import TrainConfig, Trainer
    from medfm.pretrain.build import build_method
    from medfm.pretrain.config import PretrainConfig

    config = PretrainConfig(encoder=args.model, in_chans=args.in_chans, image_size=args.image_size)
    config.method = args.method
    config.train = TrainConfig(
        steps=10**6,
        batch_size=args.batch,
        lr=1e-4,
        warmup_steps=0,
        precision=args.precision,
        compile=args.compile,
        device=str(device),
        workers=0,
    )
    method = build_method(config)
    view = method.views()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(
        args.batch, args.in_chans, args.image_size * 2, args.image_size * 2, generator=generator
    )
    samples = [view(image, generator) for image in images]
    batch = {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}
    trainer = Trainer(method, [0] * args.batch, config.train, "/dev/null")
    batches = repeat(batch)

    def step():
        return trainer.train_step(batches)["loss"]

    def flop_step():
        loss = trainer.forward_model(batch)["loss"]
        loss.backward()

    return step, flop_step, trainer.model


def build_reference(args, device):
    model = ReferenceMAE(args.model, args.image_size, args.in_chans).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    forward = torch.compile(model) if args.reference_compile else model
    x = torch.rand(args.batch, args.in_chans, args.image_size, args.image_size, device=device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = forward(x)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def flop_step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x)
        loss.backward()

    return step, flop_step, model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def child(args) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(args.device)
    torch.manual_seed(0)
    step, flop_step, model = (build_medfm if args.child == "medfm" else build_reference)(args, device)
    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    float(loss)  # wait for the device
    seconds = (time.perf_counter() - started) / args.steps
    with FlopCounterMode(display=False) as counter:
        flop_step()
    model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"step_s": seconds, "flops": counter.get_total_flops(), "peak_mib": peak, "rss_mib": rss})
    )


# ---- the parent: rounds, table, JSON ---------------------------------------------------------------------


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device.startswith("cuda") and args.precision == "bf16":
        name = torch.cuda.get_device_name(0)
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def run_child(args, side: str):
    """One round of one side: a fresh process that warms up, times ``--steps`` steps and reports."""

    def run() -> dict:
        command = [sys.executable, __file__, *sys.argv[1:], "--child", side]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{side} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return {"seconds": result.pop("step_s"), **result}

    return run


def throughput_rows(args, summary: dict) -> dict[str, dict]:
    """Images/s, FLOPs, MFU and memory of each side at its median step time."""
    peak = peak_tflops(args)
    rows = {}
    for side, runs in summary["per_round"].items():
        step_s = summary["seconds"][side]["median"]
        tflops = runs[0]["flops"] / step_s / 1e12
        rows[side] = {
            "images_per_s": round(args.batch / step_s, 1),
            "step_ms": round(step_s * 1e3, 2),
            "gflop_per_image": round(runs[0]["flops"] / args.batch / 1e9, 3),
            "tflops": round(tflops, 3),
            "mfu": round(tflops / peak, 4) if peak else None,
            "peak_mib": runs[0]["peak_mib"] and round(max(r["peak_mib"] for r in runs), 1),
            "peak_rss_mib": round(max(r["rss_mib"] for r in runs), 1),
        }
    return rows


def print_throughput(rows: dict[str, dict]) -> None:
    columns = ("img/s", "ms/step", "GFLOP/img", "TFLOP/s", "MFU", "peak MiB")
    print(f"{'side':<10} " + " ".join(f"{c:>10}" for c in columns))
    for side, row in rows.items():
        mfu = f"{row['mfu']:.1%}" if row["mfu"] else "-"
        memory = row["peak_mib"] if row["peak_mib"] else row["peak_rss_mib"]
        print(
            f"{side:<10} {row['images_per_s']:>10,.1f} {row['step_ms']:>10.1f} "
            f"{row['gflop_per_image']:>10.3f} {row['tflops']:>10.3f} {mfu:>10} {memory:>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_tiny_patch8")
    parser.add_argument("--method", default="mae", choices=["mae", "dino"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile medfm's step")
    parser.add_argument("--reference-compile", action="store_true", help="torch.compile the reference too")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    add_rounds_argument(parser)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    parser.add_argument("--child", choices=["medfm", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sides = (["reference"] if args.method == "mae" else []) + ["medfm"]  # DINO has no reference here
    summary = summarise(alternate({side: run_child(args, side) for side in sides}, args.rounds))
    rows = throughput_rows(args, summary)
    print(
        f"\n{args.method} {args.model} {args.image_size}px batch {args.batch} {args.precision} on "
        f"{device_name(args.device)}" + (" (medfm compiled)" if args.compile else "")
    )
    print(table(summary, "seconds per step"))
    print()
    print_throughput(rows)
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    out = (
        args.out
        or Path(__file__).parent / "results" / f"pretrain_throughput-{args.method}-{args.model}-{kind}.json"
    )
    write_record(
        out,
        "pretrain_throughput",
        {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        summary,
        device=device_name(args.device),
        peak_tflops=peak_tflops(args),
        throughput=rows,
        memory_note="peak_mib: CUDA max allocated; peak_rss_mib: the child process's peak resident memory",
    )


if __name__ == "__main__":
    main()
