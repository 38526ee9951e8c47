"""The fast inference path: the same outputs from fewer, faster operations.

:func:`optimize` returns a copy of a model prepared for inference only. Each
step below was kept because it measurably pays on its own (docs/benchmarks.md
has the numbers):

* **Batch norms folded** into the convolutions before them: one op instead of
  two, no normalisation pass over the activations.
* **Activations fused into the convolutions.** On CPU, conv + bias + SiLU
  (or ReLU, ReLU6, GELU, sigmoid) runs as one oneDNN primitive
  (``torch.ops.mkldnn._convolution_pointwise``, the op ``torch.compile``'s
  CPU backend emits for the same pattern), so the activation is applied
  while the output is still in cache instead of in a second pass over
  memory. Elsewhere (CUDA, MPS, or a torch without oneDNN) the activation
  runs in place on the conv output.
* **No padding copies.** TF-style asymmetric padding (one more zero row and
  column after than before, at stride 2) is rewritten as the conv's own
  symmetric padding plus one zero row and column at the start of the kernel:
  the window of every output pixel covers exactly the same inputs, so the
  result is the same, and the padded copy of the input (``F.pad``: a fresh
  buffer, a fill and a copy, the largest tensor of the stage) disappears.
* **In place where nothing else reads the tensor**: the squeeze-excite gate
  multiplies the depthwise output in place and the residual is added in
  place to the projection's output, so no extra activation-sized buffers are
  allocated.
* **Channels-last** memory format: what oneDNN's depthwise and 1×1 kernels
  want, so no layout conversions happen inside the network.
* Eval mode, frozen parameters; run it under ``torch.inference_mode()``.

The original model is left untouched and the optimised copy keeps the model's
interface (``logits``, ``last_hidden_state``, ``output_hidden_states``,
``stage_output``), so it is a drop-in replacement for inference.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from effnet_cli import malloc
from effnet_cli.core.config import tf_same_padding
from effnet_cli.malloc import keep_freed_memory
from effnet_cli.core.model import (
    EfficientNetDepthwiseLayer,
    EfficientNetEmbeddings,
    EfficientNetEncoder,
    EfficientNetExpansionLayer,
    EfficientNetFinalBlockLayer,
    EfficientNetPreTrainedModel,
    EfficientNetSqueezeExciteLayer,
)
from effnet_cli.core.model_v2 import ProjectionLayer

__all__ = ["optimize", "fold_batch_norm", "fold_batch_norms", "fuse_model", "resolve_device", "FusedConv2d", "Float32Island",
           "keep_freed_memory"]

# (module type, conv attribute, norm attribute, activation attribute or None): each conv
# is followed directly by its norm, and the norm by the activation when there is one.
_CONV_NORM_ACT = (
    (EfficientNetEmbeddings, "convolution", "batchnorm", "activation"),
    (EfficientNetExpansionLayer, "expand_conv", "expand_bn", "expand_act"),
    (EfficientNetDepthwiseLayer, "depthwise_conv", "depthwise_norm", "depthwise_act"),
    (EfficientNetFinalBlockLayer, "project_conv", "project_bn", None),
    (EfficientNetEncoder, "top_conv", "top_bn", "top_activation"),
    # EfficientNetV2's projection (the residual is in its block); its Fused-MBConv conv is an expansion layer.
    (ProjectionLayer, "project_conv", "project_bn", None),
)


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the conv before it, in place (the conv gains a bias)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # per output channel
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    new_bias = (bias - norm.running_mean) * scale + norm.bias
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold, in place, every batch norm of an eval-mode model into its conv (norms become Identity); returns it."""
    for module in model.modules():
        for cls, conv_name, norm_name, _ in _CONV_NORM_ACT:
            if isinstance(module, cls):
                fold_batch_norm(getattr(module, conv_name), getattr(module, norm_name))
                setattr(module, norm_name, nn.Identity())
    return model


# ------------------------------------------------------------------ fusion
def _onednn_attr(act: nn.Module | None) -> tuple[str, list[float], str] | None:
    """oneDNN post-op (attr, scalars, algorithm) computing ``act``, or None when it has none."""
    if act is None or isinstance(act, nn.Identity):
        return ("none", [], "")
    if isinstance(act, nn.SiLU):
        return ("swish", [], "")
    if isinstance(act, nn.ReLU):
        return ("relu", [], "")
    if isinstance(act, nn.ReLU6):
        return ("hardtanh", [0.0, 6.0], "")
    if isinstance(act, nn.Sigmoid):
        return ("sigmoid", [], "")
    if isinstance(act, nn.GELU):
        return ("gelu", [], act.approximate)  # "none" or "tanh"
    return None  # SELU, Mish, ...: conv, then the activation in place


def _in_place(act: nn.Module | None) -> nn.Module | None:
    """The same activation writing into its input (the conv output, read by nothing else)."""
    if act is None or isinstance(act, nn.Identity):
        return None
    if isinstance(act, (nn.SiLU, nn.ReLU, nn.ReLU6, nn.SELU, nn.Mish)):
        twin = copy.copy(act)
        twin.inplace = True
        return twin
    return act


@functools.lru_cache(maxsize=1)
def onednn_fusion_available() -> bool:
    """Whether this torch has oneDNN's fused conv op and it agrees with conv2d + SiLU (checked once)."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 6, 6, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 1, 3, 3, generator=gen)
        b = torch.randn(4, generator=gen)
        with torch.inference_mode():
            got = op(x, w, b, [1, 1], [2, 2], [1, 1], 4, "swish", [], "")
            want = F.silu(F.conv2d(x, w, b, 2, 1, 1, 4))
        return got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    except Exception:  # an op that exists but fails here: use the portable path
        return False


class FusedConv2d(nn.Module):
    """A conv with its bias, activation and padding folded in: one op per layer on CPU.

    Built from a (batch-norm-folded) conv, the activation after it, and the
    conv's padding, which may be an int, an asymmetric (left, right, top,
    bottom) tuple, or ``"same"`` (TF padding computed from the input size).
    Padding one more after than before (what TF-'same' does at stride 2 for
    even sizes) becomes symmetric padding with a zero row/column prepended to
    the kernel, which reads exactly the same input pixels; any other
    asymmetric padding keeps an explicit ``F.pad``.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None, *, onednn: bool = True,
                 fold_padding: bool = True, in_place: bool = True) -> None:
        super().__init__()
        self.stride = tuple(conv.stride)
        self.groups = conv.groups
        self.kernel_size = tuple(conv.kernel_size)
        if tuple(conv.dilation) != (1, 1):
            raise ValueError("FusedConv2d supports dilation 1 only.")
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype,
                                                                           device=weight.device)
        pad = getattr(conv, "pad", None)
        self.same = pad == "same" and fold_padding
        self.explicit_pad: tuple[int, int, int, int] | str | None = None
        if pad is not None and not fold_padding:
            self.explicit_pad = pad  # F.pad before the conv, as the eager model does
            self.padding = (0, 0)
        elif self.same:
            # Kernel with a zero first row and column; forward slices off what the input size does not need.
            weight = F.pad(weight, (1, 0, 1, 0))
            self.padding = (0, 0)
        elif pad is not None:
            left, right, top, bottom = pad
            if right - left in (0, 1) and bottom - top in (0, 1):
                weight = F.pad(weight, (right - left, 0, bottom - top, 0))
                self.padding = (bottom, right)
            else:
                self.explicit_pad = tuple(pad)
                self.padding = (0, 0)
        else:
            self.padding = tuple(conv.padding)
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        self.attr = _onednn_attr(act)
        # The unfused path's activation, in place on the conv output (which nothing else reads).
        self.act = _in_place(act) if in_place else (None if isinstance(act, nn.Identity) else act)
        self.onednn = onednn and self.attr is not None and onednn_fusion_available()

    def extra_repr(self) -> str:
        out, inp = self.weight.shape[0], self.weight.shape[1] * self.groups
        act = self.attr[0] if self.attr else type(self.act).__name__
        pad = "same" if self.same else (self.explicit_pad or self.padding)
        return f"{inp}, {out}, kernel_size={tuple(self.weight.shape[2:])}, stride={self.stride}, " \
               f"groups={self.groups}, padding={pad}, act={act}, onednn={self.onednn}"

    def _kernel(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The kernel and symmetric padding for an input of ``x``'s size."""
        if not self.same:
            return self.weight, self.padding
        k_h, k_w = self.kernel_size
        top, bottom = tf_same_padding(x.shape[-2], k_h, self.stride[0])
        left, right = tf_same_padding(x.shape[-1], k_w, self.stride[1])
        # TF puts the odd zero after: bottom - top and right - left are 0 or 1, never negative.
        weight = self.weight[:, :, 1 - (bottom - top):, 1 - (right - left):]
        return weight, (bottom, right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, padding = self._kernel(x)
        if self.explicit_pad == "same":
            top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        elif self.explicit_pad is not None:
            x = F.pad(x, self.explicit_pad)
        if (self.onednn and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                and not (torch.is_grad_enabled() and x.requires_grad)):
            attr, scalars, algorithm = self.attr
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, self.bias, list(padding), list(self.stride), [1, 1], self.groups, attr, scalars, algorithm)
        y = F.conv2d(x, weight, self.bias, self.stride, padding, 1, self.groups)
        return self.act(y) if self.act is not None else y


class FastSqueezeExcite(nn.Module):
    """Squeeze-excite whose gate multiplies the depthwise output in place (it is read by nothing else)."""

    def __init__(self, se: EfficientNetSqueezeExciteLayer, *, onednn: bool = True, in_place: bool = True) -> None:
        super().__init__()
        self.reduce = FusedConv2d(se.reduce, se.act_reduce, onednn=onednn, in_place=in_place)
        self.expand = FusedConv2d(se.expand, nn.Sigmoid(), onednn=onednn, in_place=in_place)
        self.in_place = in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.reduce(x.mean(dim=(2, 3), keepdim=True)))  # N×C×1×1, sigmoid applied
        return x.mul_(gate) if self.in_place else x * gate


class FastProjection(nn.Module):
    """1×1 projection with the residual added in place to its (fresh) output; dropout is a no-op in eval."""

    def __init__(self, layer: EfficientNetFinalBlockLayer, *, onednn: bool = True, in_place: bool = True) -> None:
        super().__init__()
        self.residual = layer.residual
        self.project_conv = FusedConv2d(layer.project_conv, onednn=onednn)
        self.in_place = in_place

    def forward(self, block_input: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.project_conv(x)
        if not self.residual:
            return x
        return x.add_(block_input) if self.in_place else x + block_input


def fuse_model(model: nn.Module, *, onednn: bool = True, fold_padding: bool = True,
               in_place: bool = True) -> nn.Module:
    """Replace, in place, every batch-norm-folded conv (+ activation) of ``model`` by a :class:`FusedConv2d`.

    Expects :func:`fold_batch_norms` to have run (norms replaced by Identity).
    The replaced activations become Identity, so each layer's own forward is
    unchanged: it still reads ``act(norm(conv(x)))``. The switches turn single
    steps off, so benchmarks/ablation.py can measure what each one is worth:
    ``onednn`` (one fused op per conv; off: conv2d + in-place activation),
    ``fold_padding`` (off: ``F.pad`` copies as in the eager model),
    ``in_place`` (off: squeeze-excite and residual allocate new tensors).
    """
    for module in list(model.modules()):
        for cls, conv_name, norm_name, act_name in _CONV_NORM_ACT:
            if isinstance(module, cls) and not isinstance(getattr(module, conv_name), FusedConv2d):
                act = getattr(module, act_name) if act_name else None
                setattr(module, conv_name, FusedConv2d(getattr(module, conv_name), act, onednn=onednn,
                                                       fold_padding=fold_padding, in_place=in_place))
                if act_name:
                    setattr(module, act_name, nn.Identity())
        for name, child in list(module.named_children()):
            if isinstance(child, EfficientNetSqueezeExciteLayer):
                setattr(module, name, FastSqueezeExcite(child, onednn=onednn, in_place=in_place))
            elif isinstance(child, EfficientNetFinalBlockLayer):
                setattr(module, name, FastProjection(child, onednn=onednn, in_place=in_place))
    return model


# ------------------------------------------------------------------ bfloat16
class Float32Island(nn.Module):
    """A part of a bfloat16 model kept in float32: its input is cast up, its output to ``out_dtype``.

    bfloat16 keeps 8 bits of mantissa. Measured on Lite0 with real weights
    (benchmarks/bf16_agreement.py), most of the error that changes a top-1
    class comes from the stem and the first stage, whose rounding every later
    layer carries; they are a small part of the work. The head (pooling and
    classifier) is kept in float32 too, so logits are not rounded to bfloat16
    (steps of 1/16 near 10), which would turn close calls into ties.
    """

    def __init__(self, module: nn.Module, out_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.module = module.float()
        self.out_dtype = out_dtype  # None: leave the output in float32
        if hasattr(module, "spec"):
            self.spec = module.spec  # EfficientNetModel.stage_output reads each block's spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.float())
        return y if self.out_dtype is None else y.to(self.out_dtype)


def _keep_float32_parts(fast: nn.Module, plain: EfficientNetPreTrainedModel, low: torch.dtype) -> None:
    """Replace, in the bfloat16 copy ``fast``, the stem, the first stage and the head by float32 islands.

    ``plain`` is the batch-norm-folded float32 model the islands are built from (not the bfloat16
    weights: rounding the weights is part of the error). The stem and first-stage blocks pass
    float32 between them and cast to bfloat16 once, after the last of them; the head conv's output
    is cast up, so pooling and the classifier run in float32 and return float32.
    """
    base_fast = getattr(fast, "efficientnet", fast)
    base_plain = getattr(plain, "efficientnet", plain)
    blocks_fast, blocks_plain = base_fast.encoder.blocks, base_plain.encoder.blocks
    first = [i for i, block in enumerate(blocks_plain) if block.spec.stage == 0]
    base_fast.embeddings = Float32Island(base_plain.embeddings, None if first else low)
    for i in first:
        blocks_fast[i] = Float32Island(blocks_plain[i], low if i == first[-1] else None)
    top = base_fast.encoder.top_conv
    base_fast.encoder.top_conv = nn.Sequential(top, _ToFloat32())
    if isinstance(getattr(fast, "classifier", None), nn.Linear):
        fast.classifier = plain.classifier.float()
    fast.input_dtype = torch.float32  # the stem reads float32 pixels: rounding them would lose input precision


class _ToFloat32(nn.Module):
    """Casts to float32: after the head conv, so pooling and the classifier run in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


# ------------------------------------------------------------------ device
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


# ------------------------------------------------------------------ optimize
def optimize(model: EfficientNetPreTrainedModel, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None, *, compile: bool = False,
             keep_freed_memory: bool = True) -> EfficientNetPreTrainedModel:
    """A copy of ``model`` for fast inference with the same outputs (within float rounding).

    Folds every batch norm into its conv, fuses each conv with its bias,
    activation and padding (one oneDNN op per layer on CPU), does the
    squeeze-excite gate and the residual in place, moves to ``device``
    (default: the model's own) and ``dtype``, uses channels-last memory
    format, and freezes the parameters. ``compile=True`` additionally wraps the
    forward with ``torch.compile`` and inductor's weight freezing (tens of
    seconds for the first batch of each input shape; see docs/benchmarks.md for
    what it gains). On the CPU, ``keep_freed_memory=True`` (the default) also
    has glibc keep freed activation buffers for the next batch instead of
    page-faulting them in again (:func:`effnet_cli.malloc.keep_freed_memory`:
    process-wide, about 1.4× on b0 at batch 16, more peak memory for b7);
    pass False to leave the process's allocator alone.
    With ``dtype=torch.bfloat16`` the stem, the first stage and the head
    (pooling, classifier) stay in float32 (:class:`Float32Island`): the model
    takes float32 pixel values (``input_dtype``) and returns float32 logits and
    features; everything between runs in bfloat16.
    Inputs may be given in either memory format; call it under
    ``torch.inference_mode()`` (or ``no_grad``). In float32 the logits agree
    with the original model's within 1e-4 of the largest logit (typically
    ~1e-6; tests/test_optimize.py).
    """
    from effnet_cli.core.dtypes import parse_dtype as _dtype

    fast = fold_batch_norms(copy.deepcopy(model).eval())
    target = resolve_device(device) if device is not None else model.device
    if keep_freed_memory and target.type == "cpu":
        malloc.keep_freed_memory()  # through the module: the keyword argument shadows the name here
    fast = fast.to(device=target, dtype=_dtype(dtype))
    fuse_model(fast)  # after the move: the fused path is chosen per call from the input's device and dtype
    if _dtype(dtype) == torch.bfloat16:
        plain = fuse_model(fold_batch_norms(copy.deepcopy(model).eval()).to(device=target, dtype=torch.float32))
        _keep_float32_parts(fast, plain, torch.bfloat16)
    fast = fast.to(memory_format=torch.channels_last)
    for param in fast.parameters():
        param.requires_grad_(False)
    fast.optimized = True
    if compile:
        # Freezing lets inductor treat the (frozen) weights as constants: it prepacks them and plans
        # the activation buffers, which is where a compiled forward gains on this eager path.
        fast.forward = torch.compile(fast.forward, dynamic=False, options={"freezing": True})
    return fast

