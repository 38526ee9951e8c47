"""Compound scaling: the base network, the rounding rules, and the typed stage and block rows.

The reference keeps the architecture as six parallel lists (the config.json
format). :class:`StageSpec` and :class:`BlockSpec` are the typed rows the model,
the FLOP counter and the converters read instead, derived once by
:meth:`EfficientNetConfig.stages` / :meth:`EfficientNetConfig.blocks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The published base network (EfficientNet-B0), one entry per stage. Stored as the
# reference's parallel lists because that is the config.json format.
BASE_STAGES = {
    "kernel_sizes": [3, 3, 5, 3, 5, 5, 3],
    "in_channels": [32, 16, 24, 40, 80, 112, 192],
    "out_channels": [16, 24, 40, 80, 112, 192, 320],
    "strides": [1, 2, 2, 2, 1, 2, 1],
    "num_block_repeats": [1, 2, 2, 3, 3, 4, 1],
    "expand_ratios": [1, 6, 6, 6, 6, 6, 6],
}
STAGE_LISTS = tuple(BASE_STAGES)
HEAD_CHANNELS = 1280  # width of the 1x1 head conv before width scaling

# The paper's compound-scaling constants (depth α, width β, resolution γ).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def round_filters(channels: int, width_coefficient: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale a channel count by the width coefficient, to a multiple of ``divisor``.

    Rounds to the nearest multiple but never more than 10% below the scaled value
    (the rule of the TF reference, which every port reproduces). EfficientNetV2-B0..B3
    round to the nearest multiple only (``round_limit=0``), as TF's V2 code and timm do.
    """
    scaled = channels * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < round_limit * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scale a stage's block count by the depth coefficient, rounding up."""
    return int(math.ceil(depth_coefficient * repeats))


def tf_same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(before, after) zero padding that TF's 'same' adds along one axis of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def compound_coefficients(phi: float, base_resolution: int = 224) -> tuple[float, float, int]:
    """(depth, width, image size) for the compound coefficient φ: α^φ, β^φ, γ^φ·base (multiple of 8)."""
    depth = round(ALPHA**phi, 2)
    width = round(BETA**phi, 2)
    size = int(round(base_resolution * GAMMA**phi / 8) * 8)
    return depth, width, size


@dataclass(frozen=True)
class StageSpec:
    """One stage of the network after compound scaling."""

    index: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int
    repeats: int
    block_type: str = "mbconv"  # EfficientNetV2 also has "fused" (Fused-MBConv) and "conv" stages


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block, as the model builds it."""

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    kernel_size: int
    expand_ratio: int
    drop_rate: float  # dropout on the residual branch, growing linearly with depth
    residual: bool  # every block but the first of its stage adds its input back
    adjust_padding: bool  # "fixed" mode: stride-2 depthwise pads (k//2-1, k//2), else k//2 each side
    block_type: str = "mbconv"  # "mbconv", or EfficientNetV2's "fused" (k×k expand, 1×1 project) and "conv" (k×k only)

    @property
    def expanded_channels(self) -> int:
        """Width of the depthwise conv (input width times the expansion ratio)."""
        return self.in_channels * self.expand_ratio


def blocks_of(stages: list[StageSpec], *, drop_connect_rate: float, depthwise_padding: list[int]) -> list[BlockSpec]:
    """Every block of ``stages`` in order, with its drop rate and padding."""
    total = sum(s.repeats for s in stages)
    rows: list[BlockSpec] = []
    for stage in stages:
        for j in range(stage.repeats):
            index = len(rows)
            rows.append(
                BlockSpec(
                    index=index,
                    stage=stage.index,
                    in_channels=stage.in_channels if j == 0 else stage.out_channels,
                    out_channels=stage.out_channels,
                    stride=stage.stride if j == 0 else 1,
                    kernel_size=stage.kernel_size,
                    expand_ratio=stage.expand_ratio,
                    drop_rate=drop_connect_rate * index / total,
                    residual=j > 0,
                    adjust_padding=index not in depthwise_padding,
                    block_type=stage.block_type,
                )
            )
    return rows


def odd_stride2_blocks(blocks: list[BlockSpec], image_size: int) -> list[int]:
    """Indices of stride-2 blocks whose input is odd at ``image_size``.

    These are the blocks where TF-'same' pads symmetrically; the reference
    stores them as ``depthwise_padding`` for the native size.
    """
    size = -(-image_size // 2)  # after the stride-2 stem
    odd = []
    for block in blocks:
        if block.stride == 2:
            if size % 2 == 1:
                odd.append(block.index)
            size = -(-size // 2)
    return odd
