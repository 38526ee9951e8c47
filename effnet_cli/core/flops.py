"""Parameter and multiply-add counts of an EfficientNet, from its config alone (no torch).

Everything here is arithmetic over :meth:`EfficientNetConfig.blocks`, so
``effnet config list`` can describe all thirteen variants in milliseconds
without building a model.

Conventions, chosen to match the paper (B0: 5.3M parameters, 0.39B FLOPs):

* **Parameters** are every trainable weight, batch-norm scale/shift included,
  buffers (running statistics) excluded -- what ``model.num_parameters()`` and
  the paper count. The classifier head is included.
* **MACs** are the multiply-adds of the convolutions and the classifier, which
  is what the paper calls "FLOPs". Bias additions, batch norm, activations,
  the squeeze-excite mean, residual adds and pooling are not counted.
  ``torch.utils.flop_counter.FlopCounterMode`` reports exactly twice this
  number (it counts a multiply-add as two FLOPs); the tests check that.
"""

from __future__ import annotations

from dataclasses import dataclass

from effnet_cli.core.config import BlockSpec, EfficientNetConfig

STEM_KERNEL = 3  # the stem is a 3×3, stride-2 conv in every variant
STEM_STRIDE = 2


@dataclass(frozen=True)
class LayerCost:
    """One row of the stage table (the stem, one MBConv stage, the head conv, the classifier) with its cost.

    ``stage`` numbers the MBConv stages 1..N as ``effnet embed --features stage:N``
    does; it is None for the other rows.
    """

    kind: str  # "stem", "stage", "head" (1×1 conv to hidden_dim) or "classifier" (global pool + linear)
    stage: int | None  # 1-based MBConv stage number; None for the other rows
    kernel_size: int | None  # None for the classifier, which pools globally
    stride: int | None  # None for the classifier
    expand_ratio: int | None  # None outside the MBConv stages
    in_channels: int
    out_channels: int
    repeats: int  # blocks in the stage (1 for the other rows)
    input_size: int  # side of the square feature map entering the row
    output_size: int  # side of the feature map it leaves (1 for the classifier)
    params: int
    macs: int
    block_type: str | None = None  # a stage's blocks: "mbconv", or EfficientNetV2's "fused" / "conv"


@dataclass(frozen=True)
class NetworkCost:
    """The per-row costs of one network at one input size, and their totals."""

    image_size: int
    rows: tuple[LayerCost, ...]

    @property
    def params(self) -> int:
        """All trainable parameters, classifier included."""
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        """Multiply-adds of one forward pass on one image (the paper's "FLOPs")."""
        return sum(r.macs for r in self.rows)

    @property
    def flops(self) -> int:
        """FLOPs counting a multiply-add as two operations (FlopCounterMode's, fvcore's ×2 convention)."""
        return 2 * self.macs

    @property
    def blocks(self) -> int:
        """Number of blocks (MBConv, and EfficientNetV2's Fused-MBConv)."""
        return sum(r.repeats for r in self.rows if r.kind == "stage")


def conv_output_size(config: EfficientNetConfig, size: int, kernel_size: int, stride: int, *,
                     adjust: bool = True, stem: bool = False) -> int:
    """Side of a k×k conv's output on a ``size``-wide input, under the config's padding mode.

    Mirrors ``effnet_cli.core.model._pad_for``: the "fixed" mode's asymmetric pads
    (stem, and stride-2 depthwise convs not listed in ``depthwise_padding``) pad
    one pixel less than TF-'same' would, which only shows at odd input sizes,
    where the output is floor(size/2) instead of ceil(size/2).
    """
    if stride == 1:
        return size  # odd kernels, k//2 on each side: every mode keeps the size
    if config.padding_mode == "same":
        return -(-size // stride)  # TF-'same': ceil(size / stride) by definition
    if config.padding_mode == "symmetric" or (not stem and not adjust):
        total = 2 * (kernel_size // 2)
    else:  # "fixed": (k//2 - 1, k//2) on each axis; the stem's (0, 1) is the k=3 case of it
        total = 2 * (kernel_size // 2) - 1
    return (size + total - kernel_size) // stride + 1


def _fused_cost(config: EfficientNetConfig, block: BlockSpec, size: int) -> tuple[int, int, int]:
    """(output size, params, MACs) of an EfficientNetV2 conv or Fused-MBConv block on a ``size``-wide input."""
    k = block.kernel_size
    width = block.out_channels if block.block_type == "conv" else block.expanded_channels
    out = conv_output_size(config, size, k, block.stride)
    params = k * k * block.in_channels * width + 2 * width  # the k×k conv (no bias) + batch norm
    macs = out * out * k * k * block.in_channels * width
    if block.block_type == "fused":
        params += width * block.out_channels + 2 * block.out_channels  # 1×1 projection + batch norm
        macs += out * out * width * block.out_channels
    return out, params, macs


def _block_cost(config: EfficientNetConfig, block: BlockSpec, size: int) -> tuple[int, int, int]:
    """(output size, params, MACs) of one block on a ``size``-wide input."""
    if block.block_type != "mbconv":
        return _fused_cost(config, block, size)
    e, k = block.expanded_channels, block.kernel_size
    params = macs = 0
    if block.expand_ratio != 1:  # 1×1 expansion conv (no bias) + batch norm
        params += block.in_channels * e + 2 * e
        macs += size * size * block.in_channels * e
    out = conv_output_size(config, size, k, block.stride, adjust=block.adjust_padding)
    params += k * k * e + 2 * e  # depthwise conv (one k×k filter per channel) + batch norm
    macs += out * out * k * k * e
    if config.use_squeeze_excite:
        # Two biased 1×1 convs on the pooled 1×1 map; the bottleneck is relative to the block input.
        se = max(1, int(block.in_channels * config.squeeze_expansion_ratio))
        params += e * se + se + se * e + e
        macs += 2 * e * se
    params += e * block.out_channels + 2 * block.out_channels  # 1×1 projection + batch norm
    macs += out * out * e * block.out_channels
    return out, params, macs


def network_cost(config: EfficientNetConfig, image_size: int | None = None) -> NetworkCost:
    """Parameters and MACs of ``EfficientNetForImageClassification(config)`` on one square image.

    ``image_size`` defaults to the config's native resolution. Parameters do not
    depend on it; MACs and the feature-map sizes do.
    """
    size = config.image_size if image_size is None else int(image_size)
    rows: list[LayerCost] = []

    stem = config.stem_channels
    out = conv_output_size(config, size, STEM_KERNEL, STEM_STRIDE, stem=True)
    rows.append(LayerCost(
        kind="stem", stage=None, kernel_size=STEM_KERNEL, stride=STEM_STRIDE, expand_ratio=None,
        in_channels=config.num_channels, out_channels=stem, repeats=1, input_size=size, output_size=out,
        params=STEM_KERNEL * STEM_KERNEL * config.num_channels * stem + 2 * stem,
        macs=out * out * STEM_KERNEL * STEM_KERNEL * config.num_channels * stem,
    ))
    size = out

    blocks = config.blocks()
    for spec in config.stages():
        stage_in, params, macs = size, 0, 0
        for block in blocks:
            if block.stage == spec.index:
                size, p, m = _block_cost(config, block, size)
                params += p
                macs += m
        rows.append(LayerCost(
            kind="stage", stage=spec.index + 1, kernel_size=spec.kernel_size, stride=spec.stride,
            expand_ratio=spec.expand_ratio, in_channels=spec.in_channels, out_channels=spec.out_channels,
            repeats=spec.repeats, input_size=stage_in, output_size=size, params=params, macs=macs,
            block_type=spec.block_type,
        ))

    # Head: 1×1 conv to hidden_dim + batch norm; then global pooling (no MACs) and the classifier.
    last, head, labels = blocks[-1].out_channels, config.head_channels, int(config.num_labels)
    rows.append(LayerCost(
        kind="head", stage=None, kernel_size=1, stride=1, expand_ratio=None, in_channels=last,
        out_channels=head, repeats=1, input_size=size, output_size=size,
        params=last * head + 2 * head, macs=size * size * last * head,
    ))
    if labels > 0:  # num_labels=0 makes the classifier an identity: pooled features out, nothing to count
        rows.append(LayerCost(
            kind="classifier", stage=None, kernel_size=None, stride=None, expand_ratio=None, in_channels=head,
            out_channels=labels, repeats=1, input_size=size, output_size=1,
            params=head * labels + labels, macs=head * labels,
        ))
    return NetworkCost(image_size=rows[0].input_size, rows=tuple(rows))
