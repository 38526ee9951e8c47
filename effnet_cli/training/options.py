"""The settings of a fine-tuning run, their measured defaults, and what a run returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from effnet_cli.data.limits import check_input_limits, option_time_limit
from effnet_cli.errors import InputError
from effnet_cli.training import recipe

Callback = Callable[[dict[str, Any]], None]


@dataclass
class FinetuneOptions:
    """Settings of one run. ``None`` means the default for the chosen ``freeze`` (see :func:`defaults`)."""

    model: str = "lite0"  # starting weights: variant name, hub id or directory
    val: str | None = None  # a separate validation set (folder layout or list), else a split of the data
    val_split: float = 0.2  # share of each class held out for validation when val is None
    epochs: int | None = None
    lr: float | None = None  # peak learning rate, reached after the warm-up
    batch_size: int = 32
    image_size: int | None = None  # training and saved input size; None: chosen default
    freeze: str | int = "5"  # backbone, none, or the number of stages kept as loaded
    augment: str = "none"  # none, crop (random resized crop) or standard (crop + flip); see DEFAULT note
    label_smoothing: float = 0.1
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    dtype: str = "float32"  # float32 or bfloat16 (autocast; pays off on CPUs with AMX/AVX512-BF16 and on GPUs)
    workers: int | None = None  # decode processes; None: up to 2
    max_pixels: int | None = None  # --max-pixels: larger images are unusable files; None: the decoder's default
    decode_timeout: float | None = None  # --decode-timeout, seconds per image's decode; None: the default, 0: none
    seed: int = 0
    resume: bool = False
    device: str = "auto"

    def resolved(self) -> FinetuneOptions:
        """A copy with every ``None`` default filled in and the values checked."""
        freeze = recipe.parse_freeze(self.freeze)
        probe = freeze == "backbone"
        out = FinetuneOptions(**{**asdict(self), "freeze": freeze})
        out.epochs = self.epochs if self.epochs is not None else (DEFAULT_PROBE_EPOCHS if probe else DEFAULT_EPOCHS)
        out.lr = self.lr if self.lr is not None else (DEFAULT_PROBE_LR if probe else DEFAULT_LR)
        # The probe's features cost one forward pass each: it keeps the model's own input size, so its
        # features are exactly what `effnet embed` gives. Training every epoch at that size would be slow.
        out.image_size = self.image_size if self.image_size is not None else (None if probe else DEFAULT_IMAGE_SIZE)
        if out.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {out.epochs}.")
        if out.lr <= 0:
            raise InputError(f"--lr must be positive, got {out.lr}.")
        if out.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {out.batch_size}.")
        if out.image_size is not None and not 16 <= out.image_size <= 1024:
            raise InputError(f"--image-size must be between 16 and 1024, got {out.image_size}.")
        if not 0.0 <= out.label_smoothing < 1.0:
            raise InputError(f"--label-smoothing must be in [0, 1), got {out.label_smoothing}.")
        if out.augment not in recipe.AUGMENTS:
            raise InputError(f"--augment must be one of {', '.join(recipe.AUGMENTS)}, got {out.augment!r}.")
        if out.dtype not in ("float32", "bfloat16"):
            raise InputError(f"--dtype must be float32 or bfloat16 for training, got {out.dtype!r}.")
        check_input_limits(out.max_pixels, out.decode_timeout)
        return out

    @property
    def pixel_limit(self) -> int:
        """The largest image, in pixels, that is decoded (``max_pixels`` or the decoder's default)."""
        from effnet_cli.data.decode import option_pixel_limit

        return option_pixel_limit(self.max_pixels)

    @property
    def time_limit(self) -> float | None:
        """Seconds each image's read and decode may take (None: no limit)."""
        return option_time_limit(self.decode_timeout)


# Defaults measured on a 10-class set of 1,000 training images on a 2-core CPU (docs/finetune.md). In a
# 5-epoch schedule, crop + flip augmentation cost accuracy there (94.4% against 98.4% without): it pays
# off only over longer schedules, so it is an option (--augment standard) rather than the default.
DEFAULT_IMAGE_SIZE = 128
DEFAULT_EPOCHS = 5
DEFAULT_LR = 1e-3
DEFAULT_PROBE_EPOCHS = 60
DEFAULT_PROBE_LR = 5e-3
# Fine-tuning first fits the new head on features of the unaugmented training images (a linear probe,
# seconds), then trains the network: a random head would send noisy gradients into the pretrained
# layers for the first epochs and undo part of what they know (LP-FT, Kumar et al., ICLR 2022).
HEAD_WARMUP_EPOCHS = 30

# Settings that must match for a resumed run to continue the same training.
RESUME_KEYS = ("model", "val", "val_split", "epochs", "lr", "batch_size", "image_size", "freeze", "augment",
                "label_smoothing", "weight_decay", "warmup_epochs", "dtype", "seed")


@dataclass
class FinetuneResult:
    """What :func:`effnet_cli.finetune` returns: the trained model, its preprocessing and the numbers."""

    model: nn.Module
    processor: Any
    metrics: dict[str, Any]  # final validation report (top1, top5, per_class, confusion) and counts
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (metrics.jsonl)
    output_dir: Path | None = None

