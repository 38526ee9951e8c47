"""Activation (gradient) checkpointing of the MBConv blocks, with transformers 5's options.

The model's ``gradient_checkpointing_enable`` / ``activation_checkpointing_enable``
check their keywords here (:func:`checkpointing_settings`) and the encoder runs each
checkpointed block through :func:`checkpointed`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class CheckpointSettings:
    """How the encoder checkpoints its blocks while training."""

    enabled: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # for torch.utils.checkpoint.checkpoint
    every: int = 1  # checkpoint blocks 0, n, 2n…: transformers' every_n_layers
    offload: bool = False  # keep the saved block inputs in host memory


def checkpointing_settings(gradient_checkpointing_kwargs: dict[str, Any] | None,
                           activation_checkpointing_kwargs: dict[str, Any] | None,
                           every_n_layers: int, offload: bool) -> CheckpointSettings:
    """The settings ``gradient_checkpointing_enable``'s keywords ask for, as transformers 5 checks them.

    Raises:
        TypeError: both names of the checkpointing keywords are given.
        ValueError: ``every_n_layers`` is not a positive integer.
    """
    if gradient_checkpointing_kwargs is not None and activation_checkpointing_kwargs is not None:
        raise TypeError("Pass activation_checkpointing_kwargs or gradient_checkpointing_kwargs (its older name), "
                        "not both.")
    if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1:
        raise ValueError(f"every_n_layers must be a positive integer, got {every_n_layers!r}.")
    options = activation_checkpointing_kwargs if activation_checkpointing_kwargs is not None \
        else gradient_checkpointing_kwargs
    return CheckpointSettings(True, dict(options or {}), every_n_layers, bool(offload))


def checkpointed(block: nn.Module, x: torch.Tensor, options: dict[str, Any], *, offload: bool = False
                 ) -> torch.Tensor:
    """Run ``block`` without keeping its activations; they are recomputed in the backward pass.

    The recomputation must not move the batch-norm running statistics a second
    time, or a checkpointed training run would drift from a plain one: they are
    restored after it. ``offload`` keeps what checkpointing does save (the block's
    input) in pinned host memory, as transformers' ``offload=True`` does.
    """
    from torch.utils.checkpoint import checkpoint

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _frozen_running_stats(block)

    kwargs = {"use_reentrant": False, **options}
    if not kwargs["use_reentrant"]:
        kwargs.setdefault("context_fn", contexts)
    if offload:
        with torch.autograd.graph.save_on_cpu(pin_memory=x.device.type != "cpu"):
            return checkpoint(block, x, **kwargs)
    return checkpoint(block, x, **kwargs)


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module):
    # The recomputation must save the same tensors as the first pass, so the norms run
    # unchanged (batch statistics, as in training) and their buffers are put back afterwards.
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, (mean, var, count) in zip(norms, saved):
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)

