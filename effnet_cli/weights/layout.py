"""effnet's checkpoint key layout, as data: which module path holds each part of the network.

Module names are those of the transformers reference (``effnet_cli.core.model`` is
built to match them). ``"{i}"`` is a block's index in ``encoder.blocks``. Converters
map another library's module names onto these parts; :func:`rename_modules` does
that for layouts whose parameter names match torch's (weight, bias, running_mean…).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

OUR_PARTS: dict[str, str] = {
    "stem_conv": "efficientnet.embeddings.convolution",
    "stem_bn": "efficientnet.embeddings.batchnorm",
    "expand_conv": "efficientnet.encoder.blocks.{i}.expansion.expand_conv",
    "expand_bn": "efficientnet.encoder.blocks.{i}.expansion.expand_bn",
    "dw_conv": "efficientnet.encoder.blocks.{i}.depthwise_conv.depthwise_conv",
    "dw_bn": "efficientnet.encoder.blocks.{i}.depthwise_conv.depthwise_norm",
    "se_reduce": "efficientnet.encoder.blocks.{i}.squeeze_excite.reduce",
    "se_expand": "efficientnet.encoder.blocks.{i}.squeeze_excite.expand",
    "project_conv": "efficientnet.encoder.blocks.{i}.projection.project_conv",
    "project_bn": "efficientnet.encoder.blocks.{i}.projection.project_bn",
    "head_conv": "efficientnet.encoder.top_conv",
    "head_bn": "efficientnet.encoder.top_bn",
    "classifier": "classifier",
}
STEM_HEAD_PARTS = ("stem_conv", "stem_bn", "head_conv", "head_bn", "classifier")


def rename_modules(tensors: Mapping[str, T], *, stem_head: Mapping[str, str], block: Mapping[str, str],
                   block_prefix: str) -> tuple[dict[str, T], list[str]]:
    """Rename a flat block list's keys (``{block_prefix}{n}.{module}.{param}``) to effnet's.

    ``stem_head`` and ``block`` map our parts to the source's module names; the
    parameter names are kept. Returns the renamed tensors and the source keys
    that no part claims.
    """
    stem_head_ours = {theirs: OUR_PARTS[part] for part, theirs in stem_head.items()}
    block_ours = {theirs: OUR_PARTS[part] for part, theirs in block.items()}
    in_block = re.compile(re.escape(block_prefix) + r"(\d+)\.(.+)")
    renamed: dict[str, T] = {}
    unclaimed: list[str] = []
    for key, tensor in tensors.items():
        module, _, param = key.rpartition(".")
        match = in_block.fullmatch(module)
        if match and match.group(2) in block_ours:
            ours = block_ours[match.group(2)].format(i=int(match.group(1)))
        elif module in stem_head_ours:
            ours = stem_head_ours[module]
        else:
            unclaimed.append(key)
            continue
        renamed[f"{ours}.{param}"] = tensor
    return renamed, unclaimed
