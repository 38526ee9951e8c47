"""Steps 1 and 2 of a conversion: the explicit rename table, and the named layout permutes it applies.

1. **Rename** — an explicit table (:class:`Rename` rows) maps each of our state-dict
   keys to the source's key. Tables are built from per-block templates: each
   source module says which of *its* module names plays which *part* of an MBConv
   block (``dw_conv``, ``se_reduce``, ``project_bn``, …; our names for the parts are
   :data:`effnet_cli.weights.layout.OUR_PARTS`), and :func:`build_table` expands
   that for every block of the config.
2. **Permute** — layout changes are named (:data:`PERMUTES`) and written into the
   table row that needs them, so a reader sees exactly which tensors are
   transposed and how (Keras HWIO kernels, depthwise kernels, dense kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from effnet_cli.convert.plan import Plan, Rename
from effnet_cli.core.config import BlockSpec, EfficientNetConfig
from effnet_cli.weights.layout import OUR_PARTS

# Named layout changes, applied where a rename row asks for one. torch stores conv
# kernels OIHW and linear weights (out, in); Keras stores HWIO, depthwise kernels as
# (H, W, C, depth_multiplier) and dense kernels as (in, out).
PERMUTES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "conv_hwio_to_oihw": lambda t: t.permute(3, 2, 0, 1),
    "depthwise_hwcm_to_cmhw": lambda t: t.permute(2, 3, 0, 1),  # (H, W, C, 1) -> (C, 1, H, W)
    "dense_io_to_oi": lambda t: t.t(),
}

# What kind of layer each part is: decides which parameters it has.
PART_KINDS: dict[str, str] = {
    "stem_conv": "conv", "expand_conv": "conv", "project_conv": "conv", "head_conv": "conv",
    "dw_conv": "depthwise",
    "se_reduce": "conv_bias", "se_expand": "conv_bias",
    "stem_bn": "bn", "expand_bn": "bn", "dw_bn": "bn", "project_bn": "bn", "head_bn": "bn",
    "classifier": "linear",
}


@dataclass(frozen=True)
class ParamStyle:
    """How a source names the parameters inside one layer, and which permutes they need."""

    sep: str  # between module path and parameter name: "." for torch, "/" for Keras
    params: Mapping[str, tuple[tuple[str, str, str | None, bool], ...]]  # kind -> (ours, theirs, permute, optional)


TORCH_STYLE = ParamStyle(
    sep=".",
    params={
        "conv": (("weight", "weight", None, False),),
        "depthwise": (("weight", "weight", None, False),),
        "conv_bias": (("weight", "weight", None, False), ("bias", "bias", None, False)),
        "bn": (
            ("weight", "weight", None, False),
            ("bias", "bias", None, False),
            ("running_mean", "running_mean", None, False),
            ("running_var", "running_var", None, False),
            ("num_batches_tracked", "num_batches_tracked", None, True),
        ),
        "linear": (("weight", "weight", None, False), ("bias", "bias", None, False)),
    },
)

KERAS_STYLE = ParamStyle(
    sep="/",
    params={
        "conv": (("weight", "kernel", "conv_hwio_to_oihw", False),),
        "depthwise": (("weight", "kernel", "depthwise_hwcm_to_cmhw", False),),
        "conv_bias": (("weight", "kernel", "conv_hwio_to_oihw", False), ("bias", "bias", None, False)),
        "bn": (
            ("weight", "gamma", None, False),
            ("bias", "beta", None, False),
            ("running_mean", "moving_mean", None, False),
            ("running_var", "moving_variance", None, False),
        ),
        "linear": (("weight", "kernel", "dense_io_to_oi", False), ("bias", "bias", None, False)),
    },
)


def build_table(
    config: EfficientNetConfig,
    *,
    stem_head: Mapping[str, str],
    block_parts: Callable[[BlockSpec, int], Mapping[str, str]],
    style: ParamStyle = TORCH_STYLE,
) -> list[Rename]:
    """Expand a source's templates into the full rename table for ``config``.

    ``stem_head`` maps the parts ``stem_conv, stem_bn, head_conv, head_bn,
    classifier`` to the source's module paths; ``block_parts(block, j)`` does the
    same for the parts of one block (``j`` is its position inside its stage).
    Parts our config does not build (expansion when the ratio is 1, squeeze-excite
    for Lite, the classifier of a headless checkpoint) are left out.
    """
    rows: list[Rename] = []

    def add(part: str, source_module: str, index: int | None = None) -> None:
        ours = OUR_PARTS[part].format(i=index)
        for our_param, their_param, permute, optional in style.params[PART_KINDS[part]]:
            rows.append(Rename(f"{ours}.{our_param}", f"{source_module}{style.sep}{their_param}", permute, optional))

    add("stem_conv", stem_head["stem_conv"])
    add("stem_bn", stem_head["stem_bn"])
    stage_start: dict[int, int] = {}
    for block in config.blocks():
        j = block.index - stage_start.setdefault(block.stage, block.index)
        parts = block_parts(block, j)
        for part in block_parts_built(config, block):
            add(part, parts[part], block.index)
    add("head_conv", stem_head["head_conv"])
    add("head_bn", stem_head["head_bn"])
    if config.num_labels:
        add("classifier", stem_head["classifier"])
    return rows


def block_parts_built(config: EfficientNetConfig, block: BlockSpec) -> list[str]:
    """The parts our model builds for ``block``: MBConv's, or EfficientNetV2's conv and Fused-MBConv blocks'."""
    if block.block_type == "conv":
        return ["expand_conv", "expand_bn"]  # the k×k conv, in the expansion's place
    if block.block_type == "fused":
        return ["expand_conv", "expand_bn", "project_conv", "project_bn"]
    wanted = ["dw_conv", "dw_bn", "project_conv", "project_bn"]
    if block.expand_ratio != 1:
        wanted[:0] = ["expand_conv", "expand_bn"]
    if config.use_squeeze_excite:
        wanted += ["se_reduce", "se_expand"]
    return wanted


@dataclass
class Renamed:
    """Steps 1-2's result: our tensors, plus what did not map (reported with the shape check)."""

    tensors: dict[str, torch.Tensor]
    missing: list[str]  # source keys the table needs but the checkpoint lacks
    unexpected: list[str]  # checkpoint keys the table does not use


def apply_renames(tensors: Mapping[str, torch.Tensor], plan: Plan) -> Renamed:
    """Steps 1 and 2: our state dict from the source's, every row's permute applied.

    Source tensors the table needs but the checkpoint lacks, and checkpoint
    tensors the table does not use, are collected for :func:`check_against_model`
    to report together with any shape mismatch.
    """
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set(plan.consumed)
    for row in plan.table:
        tensor = tensors.get(row.source)
        if tensor is None:
            if not row.optional:
                missing.append(row.source)
            continue
        used.add(row.source)
        if row.permute is not None:
            tensor = PERMUTES[row.permute](tensor)
        out[row.target] = tensor.contiguous()
    return Renamed(out, missing, sorted(set(tensors) - used))
