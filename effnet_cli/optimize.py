"""The fast inference path: the same outputs from fewer, faster operations.

:func:`optimize` returns a copy of a model prepared for inference only:
batch norms folded into the convolutions before them (one op instead of two,
no normalisation memory traffic), channels-last memory format (what the
CPU and GPU convolution kernels prefer for depthwise convs), eval mode and no
autograd state. The original model is left untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from effnet_cli.model import (
    EfficientNetDepthwiseLayer,
    EfficientNetEmbeddings,
    EfficientNetEncoder,
    EfficientNetExpansionLayer,
    EfficientNetFinalBlockLayer,
    EfficientNetPreTrainedModel,
)

# (module type, conv attribute, norm attribute): each conv is followed directly by its norm.
_CONV_NORM_PAIRS = (
    (EfficientNetEmbeddings, "convolution", "batchnorm"),
    (EfficientNetExpansionLayer, "expand_conv", "expand_bn"),
    (EfficientNetDepthwiseLayer, "depthwise_conv", "depthwise_norm"),
    (EfficientNetFinalBlockLayer, "project_conv", "project_bn"),
    (EfficientNetEncoder, "top_conv", "top_bn"),
)


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the conv before it, in place (the conv gains a bias)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # per output channel
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    new_bias = (bias - norm.running_mean) * scale + norm.bias
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; other strings are checked against what is present."""
    from effnet_cli.errors import InputError

    if isinstance(spec, torch.device):
        return spec
    if spec in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"Unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {spec} was asked for but this machine has no usable CUDA GPU; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"Device {spec} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("Device mps was asked for but is not available here; use --device cpu.")
    return device


def optimize(model: EfficientNetPreTrainedModel, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None, *, compile: bool = False) -> EfficientNetPreTrainedModel:
    """A copy of ``model`` for fast inference with the same outputs (within float rounding).

    Folds every batch norm into its conv, moves to ``device`` (default: the
    model's own) and ``dtype``, uses channels-last memory format, and freezes
    the parameters. ``compile=True`` additionally wraps the forward with
    ``torch.compile`` (slow first batch, faster afterwards). Inputs may be given
    in either memory format; call it under ``torch.inference_mode()``.
    """
    from effnet_cli.hub import _dtype

    fast = copy.deepcopy(model).eval()
    for module in fast.modules():
        for cls, conv_name, norm_name in _CONV_NORM_PAIRS:
            if isinstance(module, cls):
                fold_batch_norm(getattr(module, conv_name), getattr(module, norm_name))
                setattr(module, norm_name, nn.Identity())
    target = resolve_device(device) if device is not None else model.device
    fast = fast.to(device=target, dtype=_dtype(dtype), memory_format=torch.channels_last)
    for param in fast.parameters():
        param.requires_grad_(False)
    fast.optimized = True
    if compile:
        fast.forward = torch.compile(fast.forward, dynamic=False)
    return fast
