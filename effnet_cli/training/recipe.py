"""The training recipe: new head, freezing, optimizer and schedule, augmentation, one training step.

Kept apart from the loop (``loop.py``) so the recipe can be read in one
sitting: AdamW with no weight decay on norms and biases, a linear warm-up
then a cosine decay to zero, cross-entropy with optional label smoothing,
random-resized-crop + horizontal-flip augmentation.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from effnet_cli.errors import InputError

AUGMENTS = ("standard", "crop", "none")
# Smallest share of the image a random crop keeps: low enough to vary the framing, high enough that the
# object usually stays in view on small datasets.
CROP_SCALE = (0.5, 1.0)


def _with_new_head(model: nn.Module, id2label: dict[int, str]) -> nn.Module:
    """The same model with a freshly initialised classifier for ``id2label``'s classes.

    This is the library's head swap (``from_pretrained(..., id2label=…, ignore_mismatched_sizes=True)``,
    the reference's initialisation of the new layer), applied to the weights already loaded; the
    config's ``num_labels``, ``id2label`` and ``label2id`` follow, so the saved directory names the
    user's classes.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "newly initialised ... train the model": that is what comes next
        swapped = type(model).from_pretrained(
            None, config=model.config, state_dict=model.state_dict(), id2label=dict(id2label),
            label2id={name: i for i, name in id2label.items()}, ignore_mismatched_sizes=True,
            dtype=next(model.parameters()).dtype)
    swapped.source = getattr(model, "source", None)
    return swapped


def parse_freeze(value: str | int) -> str | int:
    """``backbone``, ``none`` or a number of stages (the stem and the first N stages are frozen)."""
    text = str(value).strip().lower()
    if text in ("backbone", "none"):
        return text
    if text.isdigit():
        return int(text)
    raise InputError(f"--freeze must be backbone, none or a number of stages, got {value!r}.")


def frozen_modules(model: nn.Module, freeze: str | int) -> list[nn.Module]:
    """The modules whose weights stay as loaded (and whose batch norms keep their ImageNet statistics)."""
    base = model.efficientnet
    if freeze == "none":
        return []
    if freeze == "backbone":
        return [base]
    stages = len(model.config.stages())
    if not 0 <= int(freeze) <= stages:
        raise InputError(f"--freeze N needs N in 0..{stages} (the model has {stages} stages); got {freeze}.")
    blocks = [block for spec, block in zip(model.config.blocks(), base.encoder.blocks) if spec.stage < int(freeze)]
    return ([base.embeddings] + blocks) if int(freeze) > 0 else []


def apply_freeze(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """Stop gradients to ``frozen``, and keep every batch norm on its loaded statistics (call after ``model.train()``).

    Batch norms still learn their scale and shift where they are not frozen,
    but normalise with the ImageNet running statistics rather than those of
    each batch: batches of a few dozen images from a small dataset give noisy
    statistics, and the network then computes, in training, the features the
    new head was fitted on.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    for module in frozen:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; norms' scales and all biases get no weight decay.

    Decaying a batch norm's scale or a bias towards zero only fights the
    normalisation; decay is meant to keep the weights of convolutions and the
    classifier small.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from ~0 to the peak over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy in float32 (also under bfloat16 autocast), with optional label smoothing."""
    return nn.functional.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


class TrainTransform:
    """Per-image training augmentation, then the model's own normalisation (picklable for workers).

    ``standard``: random resized crop + horizontal flip; ``crop``: the crop
    only (for classes a mirror image changes, like digits or text);
    ``none``: the evaluation preprocessing.
    """

    def __init__(self, processor: Any, image_size: int, augment: str) -> None:
        if augment not in AUGMENTS:
            raise InputError(f"--augment must be one of {', '.join(AUGMENTS)}, got {augment!r}.")
        self.augment = augment
        self.image_size = image_size
        self.eval_processor = processor
        # The normalisation alone: the crop below already produced the final size.
        self.normalize = processor.replace(do_resize=False, do_center_crop=False)

    def __call__(self, image: Any) -> torch.Tensor:
        if self.augment == "none":
            return self.eval_processor.preprocess_pil(image)
        from torchvision.transforms import v2

        steps = [v2.RandomResizedCrop(self.image_size, scale=CROP_SCALE, antialias=True)]
        if self.augment == "standard":
            steps.append(v2.RandomHorizontalFlip())
        return self.normalize.preprocess_pil(v2.Compose(steps)(image))


def fit_head(head: nn.Module, features: torch.Tensor, targets: torch.Tensor, *, epochs: int, lr: float,
             weight_decay: float, batch_size: int, label_smoothing: float, seed: int) -> None:
    """Fit a linear ``head`` on fixed features with this recipe (no dropout; no global RNG used)."""
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = make_optimizer(head, lr, weight_decay)
    steps = len(epoch_order(len(targets), 0, 0, batch_size))
    schedule = make_schedule(optimizer, steps * epochs, steps)
    for epoch in range(epochs):
        for batch in epoch_order(len(targets), seed + 104_729, epoch, batch_size):
            loss = loss_fn(head(features[batch]), targets[batch], label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one image in one epoch: independent of workers, batch order and resumes."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


def epoch_order(n: int, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
    """The batches of one epoch: a seeded shuffle, last partial batch dropped (a batch of 1 upsets batch norm)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    usable = n - n % batch_size if n >= batch_size else n
    return [order[i:i + batch_size] for i in range(0, usable, batch_size)]


def worker_init(_worker_id: int) -> None:
    """Decode workers: one thread, lowest priority, and Ctrl-C left to the main process (which checkpoints)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        os.nice(19)
    except OSError:
        pass
