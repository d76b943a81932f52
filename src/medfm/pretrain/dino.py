"""DINOv2-style self-distillation ("BioVFM-D"): DINO + iBOT + KoLeo with an EMA teacher.

A student sees global crops (with block-wise iBOT masks: masked patches replaced by a learnable mask
token) and smaller local crops; an exponential-moving-average teacher sees the unmasked global crops.
The losses are

- **DINO**: cross-entropy between the teacher's class-token distribution of each global crop and the
  student's of every *other* crop (global and local), averaged over pairs and images;
- **iBOT**: cross-entropy between teacher and student patch-token distributions at the masked patches of
  the same global crop, averaged over each image's masked patches, then over all global crops;
- **KoLeo**: ``-log`` of the distance of each student global class feature (L2-normalised backbone
  output) to its nearest neighbour among the batch's same crop, which spreads the features out; summed
  over the global crops, as DINOv2 does.

During the first ``freeze_last_layer_epochs`` epochs the gradients of the student heads' last layers are
dropped (:class:`FreezeLastLayers`, a training hook), as DINO's ``freeze_last_layer``.

Teacher outputs are centred (running mean, DINO) or balanced by Sinkhorn-Knopp (DINOv2), sharpened by a
teacher temperature that warms up linearly. After each optimiser step the teacher follows the student
with a momentum that rises from ``momentum_start`` to ``momentum_end`` on a cosine. The teacher encoder is
the one a bundle exports (``encoder_prefix = "teacher_encoder."``), as in DINOv2.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medfm.engine.hooks import Hook
from medfm.errors import ConfigError
from medfm.pretrain.base import METHODS, PretrainMethod, View
from medfm.pretrain.views import MultiCropView, ViewConfig

if TYPE_CHECKING:
    from medfm.engine.trainer import Trainer

SINKHORN_ITERATIONS = 3
KOLEO_EPS = 1e-8
CENTERINGS = ("center", "sinkhorn")


@dataclass
class DINOConfig:
    n_global: int = 2
    """Global crops per image (the teacher's inputs)."""
    n_local: int = 4
    """Local crops per image (student only)."""
    local_size: int = 0
    """Side of local crops; 0 means ``image_size * 3 // 7`` rounded to the nearest multiple of the patch
    size, at least one patch (96 -> 98 px for 224 px and patch 14, as in DINOv2; 48 px for 128 and 16)."""
    out_dim: int = 4096
    """Prototypes of the DINO (and iBOT) head."""
    head_hidden: int = 1024
    head_bottleneck: int = 256
    head_layers: int = 3
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    """Teacher temperature after warm-up."""
    teacher_temp_warmup: float = 0.04
    """Teacher temperature at the start of training (linearly to ``teacher_temp``)."""
    teacher_temp_warmup_fraction: float = 0.1
    """Fraction of the total steps over which the teacher temperature warms up."""
    centering: str = "center"
    """``"center"``: subtract a running mean of teacher logits; ``"sinkhorn"``: Sinkhorn-Knopp (3 steps)."""
    center_momentum: float = 0.9
    momentum_start: float = 0.992
    """Teacher EMA momentum at the start; rises on a cosine to ``momentum_end``."""
    momentum_end: float = 1.0
    ibot_weight: float = 1.0
    ibot_mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    """Range of the fraction of patches masked in a masked global crop."""
    ibot_mask_probability: float = 0.5
    """Fraction of global crops that get an iBOT mask."""
    ibot_separate_head: bool = False
    """Give iBOT its own heads (otherwise the DINO heads score patch tokens too)."""
    koleo_weight: float = 0.1
    freeze_last_layer_epochs: int = 1
    """Epochs at the start during which the heads' last layers do not learn (DINO's ``freeze_last_layer``);
    0 turns freezing off."""

    def check(self) -> DINOConfig:
        """Raise :class:`ConfigError` naming the first invalid key; return ``self``."""
        positive_ints = ("n_global", "out_dim", "head_hidden", "head_bottleneck", "head_layers")
        for key in positive_ints:
            if getattr(self, key) < 1:
                raise ConfigError(f"dino.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_local", "local_size", "freeze_last_layer_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"dino.{key} must be >= 0, got {getattr(self, key)}")
        if self.n_global == 1 and self.n_local == 0:
            raise ConfigError("dino.n_local must be >= 1 when dino.n_global is 1 (no crop pairs to compare)")
        for key in ("student_temp", "teacher_temp", "teacher_temp_warmup"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"dino.{key} must be > 0, got {getattr(self, key)}")
        for key in (
            "teacher_temp_warmup_fraction",
            "momentum_start",
            "momentum_end",
            "ibot_mask_probability",
        ):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"dino.{key} must be in [0, 1], got {getattr(self, key)}")
        if not 0.0 <= self.center_momentum < 1.0:
            raise ConfigError(f"dino.center_momentum must be in [0, 1), got {self.center_momentum}")
        if self.centering not in CENTERINGS:
            raise ConfigError(f"dino.centering must be one of {list(CENTERINGS)}, got {self.centering!r}")
        for key in ("ibot_weight", "koleo_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"dino.{key} must be >= 0, got {getattr(self, key)}")
        try:
            low, high = (float(v) for v in self.ibot_mask_ratio)
        except (TypeError, ValueError):
            raise ConfigError(
                f"dino.ibot_mask_ratio must be two numbers [min, max], got {self.ibot_mask_ratio!r}"
            ) from None
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"dino.ibot_mask_ratio must satisfy 0 <= min <= max <= 1, got {[low, high]}")
        return self


class DINOHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2-normalise -> weight-normalised linear layer without bias.

    The last layer's rows are unit vectors (weight norm with the gain fixed to 1, as DINO's
    ``norm_last_layer``), so the logits are cosines in ``[-1, 1]``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        modules: list[nn.Module] = []
        for i in range(layers):
            modules.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                modules.append(nn.GELU())
        self.mlp = nn.Sequential(*modules)
        self.last_weight = nn.Parameter(torch.empty(out_dim, bottleneck))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.last_weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(x, F.normalize(self.last_weight, dim=1, eps=1e-6))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
    """Sum (or ``op``) over processes in place when torch.distributed is running."""
    if _distributed():
        dist.all_reduce(tensor, op=op if op is not None else dist.ReduceOp.SUM)
    return tensor


def sinkhorn_knopp(
    logits: torch.Tensor, temp: torch.Tensor | float, iterations: int = SINKHORN_ITERATIONS
) -> torch.Tensor:
    """Teacher probabilities ``[B, K]`` balanced over the ``K`` prototypes by Sinkhorn-Knopp.

    Each row sums to 1 and, as the iterations converge, each column to ``B / K`` (with ``B`` counted over
    all processes when distributed). Works with ``B = 0`` on some process (it still joins the reductions).
    """
    logits = logits.float()
    shift = logits.max() if logits.numel() else logits.new_tensor(-torch.inf)
    shift = _all_reduce(shift.detach().clone(), dist.ReduceOp.MAX if _distributed() else None)
    q = torch.exp((logits - shift) / temp).t()  # [K, B]
    n_samples = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    n_prototypes = q.shape[0]
    q = q / _all_reduce(q.sum()).clamp_min(torch.finfo(q.dtype).tiny)
    for _ in range(iterations):
        rows = _all_reduce(q.sum(dim=1, keepdim=True))
        q = q / rows.clamp_min(torch.finfo(q.dtype).tiny) / n_prototypes
        q = q / q.sum(dim=0, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny) / n_samples.clamp_min(1)
    return (q * n_samples).t()


def koleo_loss(features: torch.Tensor, eps: float = KOLEO_EPS) -> torch.Tensor:
    """Kozachenko-Leonenko entropy term: mean of ``-log(distance to nearest neighbour + eps)``.

    ``features`` ``[B, D]`` are L2-normalised first; fewer than two rows give 0.
    """
    if features.shape[0] < 2:
        return features.sum() * 0.0
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distance = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distance + eps).mean()


def global_koleo_loss(class_features: torch.Tensor, n_global: int) -> torch.Tensor:
    """KoLeo of each global crop's ``B`` class features ``[n_global * B, D]`` (crop-major), summed over the
    crops as DINOv2 does; an image's crops are never each other's neighbours."""
    return torch.stack([koleo_loss(chunk) for chunk in class_features.chunk(n_global)]).sum()


def dino_loss(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Cross-entropy of each teacher global crop ``[G, B, K]`` against every *other* student crop
    ``[V, B, K]`` (the same ``G`` global crops first, then the local ones), averaged over pairs and images.
    """
    n_global, batch_size = teacher_probs.shape[:2]
    n_views = student_logits.shape[0]
    student_logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    with torch.autocast(device_type=student_logp.device.type, enabled=False):  # keep the sum in float32
        cross = -torch.einsum("tbk,sbk->tsb", teacher_probs.float(), student_logp)  # [G, V, B]
    same_view = torch.eye(n_global, n_views, dtype=torch.bool, device=cross.device)
    n_pairs = n_global * n_views - n_global
    return cross.masked_fill(same_view.unsqueeze(-1), 0.0).sum() / (n_pairs * batch_size)


def ibot_loss(
    teacher_probs: torch.Tensor, student_logits: torch.Tensor, masks: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """Cross-entropy at the masked patches ``[M, K]`` of crops ``masks`` ``[N, P]`` (``M`` = its true
    entries, in order): mean over each crop's masked patches, then over all ``N`` crops, those without a
    mask counting 0 (DINOv2's iBOT patch loss)."""
    student_logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    per_token = -(teacher_probs.float() * student_logp).sum(dim=-1)
    per_crop_weight = 1.0 / masks.sum(dim=-1, keepdim=True).clamp(min=1)
    token_weight = per_crop_weight.expand_as(masks)[masks]
    return (per_token * token_weight).sum() / masks.shape[0]


class FreezeLastLayers(Hook):
    """Drops the gradients of DINO heads' last layers during the first ``epochs`` epochs, as DINO's
    ``freeze_last_layer`` (which, its authors found, helps training).

    Dropped (``None``) rather than zeroed, so AdamW neither decays those weights nor feeds their moments.
    """

    name = "dino_freeze_last_layer"

    def __init__(self, heads: list[DINOHead], epochs: int):
        self.heads, self.epochs = heads, epochs

    def after_backward(self, trainer: Trainer) -> None:
        if trainer.epoch < self.epochs:
            for head in self.heads:
                head.last_weight.grad = None


class DINO(PretrainMethod):
    """DINOv2-style pretraining of ``encoder`` (a medfm ViT with ``tokenize`` / ``encode_tokens``).

    Batches hold ``global_crops`` ``[B, n_global, C, G, G]``, ``local_crops`` ``[B, n_local, C, L, L]`` and
    ``ibot_masks`` ``[B, n_global, (G / patch) ** 2]`` (from :meth:`views`). Training progress (for the
    teacher temperature and momentum schedules) is the buffer ``progress``, set by :meth:`after_step`, so
    it is saved and restored with the method's state.
    """

    name = "dino"
    encoder_prefix = "teacher_encoder."

    def __init__(
        self, encoder: nn.Module, config: DINOConfig, image_size: int, views: ViewConfig | None = None
    ):
        super().__init__()
        self.config = config.check()
        self.view_config = (views or ViewConfig()).check()
        patch = encoder.patch_size[0]
        if image_size < patch or image_size % patch:
            raise ConfigError(
                f"image_size must be a positive multiple of the patch size {patch}, got {image_size}"
            )
        self.image_size = image_size
        if config.local_size:
            if config.local_size % patch:
                raise ConfigError(
                    f"dino.local_size must be a multiple of the patch size {patch}, got {config.local_size}"
                )
            self.local_size = config.local_size
        else:
            self.local_size = max(patch, round(image_size * 3 // 7 / patch) * patch)
        dim = encoder.embed_dim
        head_args = (dim, config.out_dim, config.head_hidden, config.head_bottleneck, config.head_layers)

        self.student_encoder = encoder
        self.student_head = DINOHead(*head_args)
        self.student_ibot_head = DINOHead(*head_args) if config.ibot_separate_head else None
        self.teacher_encoder = copy.deepcopy(encoder)
        self.teacher_head = copy.deepcopy(self.student_head)
        self.teacher_ibot_head = copy.deepcopy(self.student_ibot_head)
        for module in self._teacher_modules():
            module.requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        if config.centering == "center":
            self.register_buffer("dino_center", torch.zeros(1, config.out_dim))
            self.register_buffer("ibot_center", torch.zeros(1, config.out_dim))
        else:
            self.dino_center = None
            self.ibot_center = None
        self.register_buffer("progress", torch.zeros(()))
        self.train()

    def train(self, mode: bool = True) -> DINO:
        """Switch the student's mode; the teacher always runs in eval mode (no dropout or drop path)."""
        super().train(mode)
        for module in self._teacher_modules():
            module.train(False)
        return self

    # ---------------------------------------------------------------- schedules

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.student_encoder, self.teacher_encoder), (self.student_head, self.teacher_head)]
        if self.student_ibot_head is not None:
            pairs.append((self.student_ibot_head, self.teacher_ibot_head))
        return pairs

    def _teacher_modules(self) -> list[nn.Module]:
        return [teacher for _, teacher in self._pairs()]

    def momentum_at(self, progress: float | torch.Tensor) -> float | torch.Tensor:
        """Teacher EMA momentum at ``progress`` in [0, 1] (cosine from start to end)."""
        start, end = self.config.momentum_start, self.config.momentum_end
        cosine = torch.cos(math.pi * progress) if torch.is_tensor(progress) else math.cos(math.pi * progress)
        return end - (end - start) * (cosine + 1.0) / 2.0

    def teacher_temp_at(self, progress: float | torch.Tensor) -> float | torch.Tensor:
        """Teacher temperature at ``progress``: linear warm-up, then constant."""
        cfg = self.config
        if cfg.teacher_temp_warmup_fraction <= 0:
            ramp = progress * 0.0 + 1.0
        elif torch.is_tensor(progress):
            ramp = (progress / cfg.teacher_temp_warmup_fraction).clamp(max=1.0)
        else:
            ramp = min(progress / cfg.teacher_temp_warmup_fraction, 1.0)
        return cfg.teacher_temp_warmup + (cfg.teacher_temp - cfg.teacher_temp_warmup) * ramp

    # ------------------------------------------------------------------ forward

    def _encode(self, encoder: nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None = None):
        """``(class tokens [N, D], patch tokens [N, P, D])`` of images ``x`` ``[N, C, H, W]``."""
        mask_token = self.mask_token if token_mask is not None else None
        tokens = encoder.encode_tokens(encoder.tokenize(x, token_mask, mask_token))
        return tokens[:, 0], tokens[:, encoder.num_prefix_tokens :]

    def _teacher_probs(self, logits: torch.Tensor, temp: torch.Tensor, center: torch.Tensor | None):
        """Centred (and center-updated) or Sinkhorn-balanced teacher probabilities, float32."""
        logits = logits.float()
        if self.config.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp)
        probs = F.softmax((logits - center) / temp, dim=-1)
        total = _all_reduce(torch.cat([logits.sum(dim=0), logits.new_tensor([logits.shape[0]])]))
        count = total[-1]
        batch_mean = total[:-1] / count.clamp_min(1.0)
        updated = center * self.config.center_momentum + batch_mean * (1.0 - self.config.center_momentum)
        center.copy_(torch.where(count > 0, updated, center))
        return probs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.config
        for key in ("global_crops", "local_crops", "ibot_masks"):
            if key not in batch:
                raise ValueError(f"DINO batches need {key!r} (from DINO.views()); got keys {sorted(batch)}")
        global_crops, local_crops = batch["global_crops"], batch["local_crops"]
        if global_crops.ndim != 5 or local_crops.ndim != 5:
            raise ValueError(
                "DINO expects global_crops [B, n_global, C, G, G] and local_crops [B, n_local, C, L, L], got "
                f"{tuple(global_crops.shape)} and {tuple(local_crops.shape)}"
            )
        batch_size, n_global = global_crops.shape[:2]
        n_local = local_crops.shape[1]
        if n_global < 1 or (n_global == 1 and n_local == 0):
            raise ValueError(f"DINO needs two crops to compare, got {n_global} global and {n_local} local")
        # crop-major order: index v * B + b is crop v of image b
        globals_flat = global_crops.transpose(0, 1).flatten(0, 1)
        masks = batch["ibot_masks"].transpose(0, 1).flatten(0, 1).bool()
        grid = self.student_encoder.grid_size(tuple(global_crops.shape[-2:]))
        if masks.shape[-1] != grid[0] * grid[1]:
            raise ValueError(
                f"ibot_masks have {masks.shape[-1]} patches, the global crops {grid[0] * grid[1]}"
            )
        teacher_temp = self.teacher_temp_at(self.progress)

        with torch.no_grad():
            t_cls, t_patch = self._encode(self.teacher_encoder, globals_flat)
            teacher_ibot_head = self.teacher_ibot_head or self.teacher_head
            t_dino = self._teacher_probs(self.teacher_head(t_cls), teacher_temp, self.dino_center)
            t_ibot = self._teacher_probs(teacher_ibot_head(t_patch[masks]), teacher_temp, self.ibot_center)

        s_cls, s_patch = self._encode(self.student_encoder, globals_flat, masks)
        student_cls = [s_cls]
        if n_local:
            l_cls, _ = self._encode(self.student_encoder, local_crops.transpose(0, 1).flatten(0, 1))
            student_cls.append(l_cls)
        s_logits = self.student_head(torch.cat(student_cls)).unflatten(0, (n_global + n_local, batch_size))

        dino = dino_loss(t_dino.unflatten(0, (n_global, batch_size)), s_logits, cfg.student_temp)
        student_ibot_head = self.student_ibot_head or self.student_head
        ibot = ibot_loss(t_ibot, student_ibot_head(s_patch[masks]), masks, cfg.student_temp)
        koleo = global_koleo_loss(s_cls, n_global)

        loss = dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo
        return {
            "loss": loss,
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            "teacher_temp": torch.as_tensor(teacher_temp).detach(),
            "momentum": torch.as_tensor(self.momentum_at(self.progress)).detach(),
        }

    # ---------------------------------------------------------------- training

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher with the momentum at ``step / total_steps``; advance ``progress``."""
        total_steps = max(int(total_steps), 1)
        momentum = float(self.momentum_at(min(step / total_steps, 1.0)))
        for student, teacher in self._pairs():
            s_params = dict(student.named_parameters())
            t_params = dict(teacher.named_parameters())
            if s_params.keys() != t_params.keys():
                raise RuntimeError("student and teacher parameters differ; cannot update the teacher")
            names = list(s_params)
            t_list = [t_params[n] for n in names]
            s_list = [s_params[n].detach().to(t_params[n].dtype) for n in names]
            torch._foreach_mul_(t_list, momentum)
            torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
        self.progress.fill_(min((step + 1) / total_steps, 1.0))

    def hooks(self) -> list[Hook]:
        """Freezing of the student heads' last layers during the first ``freeze_last_layer_epochs``."""
        if not self.config.freeze_last_layer_epochs:
            return []
        heads = [head for head in (self.student_head, self.student_ibot_head) if head is not None]
        return [FreezeLastLayers(heads, self.config.freeze_last_layer_epochs)]

    def check_schedule(self, steps: int, steps_per_epoch: float) -> None:
        """Refuse a run that ends before the heads' last layers start learning."""
        epochs = self.config.freeze_last_layer_epochs
        if epochs and epochs * steps_per_epoch >= steps:
            raise ConfigError(
                f"dino.freeze_last_layer_epochs={epochs} covers the whole run ({steps} steps, "
                f"{steps_per_epoch:g} per epoch): the heads' last layers would never learn; lower it (0: off)"
            )

    def views(self) -> View:
        return MultiCropView(
            self.view_config,
            global_size=self.image_size,
            local_size=self.local_size,
            n_global=self.config.n_global,
            n_local=self.config.n_local,
            in_chans=self.student_encoder.in_chans,
            patch_size=self.student_encoder.patch_size[0],
            mask_ratio=list(self.config.ibot_mask_ratio),
            mask_probability=self.config.ibot_mask_probability if self.config.ibot_weight > 0 else 0.0,
        )

    def export_config(self) -> dict[str, Any]:
        """The DINO settings, with ``local_size`` resolved to the size actually used."""
        exported = dataclasses.asdict(self.config)
        exported["local_size"] = self.local_size
        return exported


METHODS.register("dino", DINO)
