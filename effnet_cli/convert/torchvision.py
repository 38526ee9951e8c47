"""torchvision's EfficientNet-B0…B7 and EfficientNetV2-S/M/L (``torchvision.models.efficientnet_b*``, ``efficientnet_v2_*``).

torchvision pads every conv symmetrically (k//2), uses torch's default batch-norm
eps (1e-5) for B0-B4 but 1e-3 for B5-B7, and ships its preprocessing in the weight
enums (``EfficientNet_B3_Weights.IMAGENET1K_V1.transforms()``): resize the shorter
side, center-crop, ImageNet mean/std. Keys look like ``features.0.0.weight`` (stem),
``features.<stage+1>.<j>.block.<k>...`` (blocks), ``features.8.0.weight`` (head conv)
and ``classifier.1.weight``. V2 (eps 1e-3) has six or seven stages; its Fused-MBConv blocks hold
``block.0`` (the k×k conv) and, when they expand, ``block.1`` (the projection).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import torch

from effnet_cli.core.config import BlockSpec, EfficientNetConfig
from effnet_cli.convert.common import (
    B_VARIANTS,
    Checkpoint,
    Plan,
    Rename,
    build_table,
    choose_variant,
    count_classes,
    labels_note,
    preprocessor_config,
    v2_config,
    variant_config,
)
from effnet_cli.errors import ConfigError

NAME = "torchvision"
PACKAGE = "torchvision"



def stem_head(num_stages: int) -> dict[str, str]:
    """Where the stem, head conv and classifier are; the head follows the last stage."""
    return {
        "stem_conv": "features.0.0",
        "stem_bn": "features.0.1",
        "head_conv": f"features.{num_stages + 1}.0",
        "head_bn": f"features.{num_stages + 1}.1",
        "classifier": "classifier.1",  # classifier.0 is the dropout
    }


# Inside ``features.<stage+1>.<j>.block``: a Sequential whose indices shift by one
# when the block has no expansion conv (expand ratio 1).
BLOCK_EXPANDED = {
    "expand_conv": "block.0.0", "expand_bn": "block.0.1",
    "dw_conv": "block.1.0", "dw_bn": "block.1.1",
    "se_reduce": "block.2.fc1", "se_expand": "block.2.fc2",
    "project_conv": "block.3.0", "project_bn": "block.3.1",
}
BLOCK_NO_EXPANSION = {
    "dw_conv": "block.0.0", "dw_bn": "block.0.1",
    "se_reduce": "block.1.fc1", "se_expand": "block.1.fc2",
    "project_conv": "block.2.0", "project_bn": "block.2.1",
}
# V2's FusedMBConv: one Conv2dNormActivation when it does not expand ("conv"), else the k×k conv and the projection.
BLOCK_FUSED = {"expand_conv": "block.0.0", "expand_bn": "block.0.1", "project_conv": "block.1.0",
               "project_bn": "block.1.1"}
V2_VARIANTS = ("v2_s", "v2_m", "v2_l")  # torchvision's V2 bodies are the TF tables, unscaled

# The weight enums' eval transforms, for when torchvision is not importable at
# conversion time: (resize of the shorter side, crop, interpolation). All use ImageNet mean/std.
_TRANSFORMS = {
    "b0": (256, 224, "bicubic"), "b1": (255, 240, "bilinear"), "b2": (288, 288, "bicubic"),
    "b3": (320, 300, "bicubic"), "b4": (384, 380, "bicubic"), "b5": (456, 456, "bicubic"),
    "b6": (528, 528, "bicubic"), "b7": (600, 600, "bicubic"),
    "v2_s": (384, 384, "bilinear"), "v2_m": (480, 480, "bilinear"),
}


def matches(keys: Collection[str]) -> bool:
    """Whether a state dict has torchvision's EfficientNet layout."""
    return "features.0.0.weight" in keys and any(k.startswith("features.1.0.block.") for k in keys)


def parse_arch(arch: str) -> tuple[str, str | None]:
    """``efficientnet_b3`` / ``b3`` / ``efficientnet_v2_s.IMAGENET1K_V1`` -> (``b3`` or ``v2_s``, weights tag)."""
    name, _, tag = arch.partition(".")
    match = re.fullmatch(r"(?:efficientnet_)?(b[0-7]|v2_[sml])", name.strip().lower())
    if not match:
        raise ConfigError(f"torchvision arch must be efficientnet_b0 … efficientnet_b7 or efficientnet_v2_s/m/l, "
                          f"got {arch!r}.")
    return match.group(1), tag or None


def _block_parts(block: BlockSpec, j: int) -> dict[str, str]:
    if block.block_type != "mbconv":
        template = BLOCK_FUSED
    else:
        template = BLOCK_EXPANDED if block.expand_ratio != 1 else BLOCK_NO_EXPANSION
    return {part: f"features.{block.stage + 1}.{j}.{path}" for part, path in template.items()}


def table(config: EfficientNetConfig) -> list[Rename]:
    """The rename table (our key <- torchvision key) for ``config``."""
    return build_table(config, stem_head=stem_head(len(config.in_channels)), block_parts=_block_parts)


def preprocessing(variant: str, tag: str | None = None) -> dict[str, Any]:
    """The eval transform of torchvision's weight enum (DEFAULT, or ``tag``), as a preprocessor config."""
    try:
        from torchvision.models import get_model_weights
    except ImportError:  # torchvision is a dependency, but keep conversion working without it
        if variant not in _TRANSFORMS:
            raise ConfigError(f"torchvision is not importable, so efficientnet_{variant}'s preprocessing is unknown.")
        resize, crop, interp = _TRANSFORMS[variant]
        return preprocessor_config(crop=crop, resize=resize, resample=interp)
    enum = get_model_weights(f"efficientnet_{variant}")
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError:
        options = ", ".join(w.name for w in enum)
        raise ConfigError(f"torchvision has no {tag!r} weights for efficientnet_{variant}; choose one of {options}.") from None
    transform = weights.transforms()
    return preprocessor_config(
        crop=int(transform.crop_size[0]),
        resize=int(transform.resize_size[0]),
        resample=transform.interpolation.value,
        mean=transform.mean,
        std=transform.std,
    )


def _plan_for(variant: str, tag: str | None, num_labels: int) -> Plan:
    resize_crop = preprocessing(variant, tag)
    if variant in V2_VARIANTS:  # torchvision builds V2 with BatchNorm2d(eps=1e-3), symmetric padding
        config = v2_config(variant.removeprefix("v2_"), num_labels=num_labels,
                           image_size=resize_crop["crop_size"]["height"], padding_mode="symmetric",
                           batch_norm_eps=1e-3)
        return Plan(NAME, f"efficientnet_{variant}" + (f".{tag}" if tag else ""), config, table(config),
                    resize_crop, notes=[n for n in (labels_note(num_labels),) if n])
    config = variant_config(
        variant,
        num_labels=num_labels,
        image_size=resize_crop["crop_size"]["height"],
        padding_mode="symmetric",
        # torchvision builds B5-B7 with BatchNorm2d(eps=1e-3) and B0-B4 with torch's default.
        batch_norm_eps=1e-3 if variant in ("b5", "b6", "b7") else 1e-5,
    )
    notes = [n for n in (labels_note(num_labels),) if n]
    return Plan(NAME, f"efficientnet_{variant}" + (f".{tag}" if tag else ""), config, table(config), resize_crop,
                notes=notes)


def plan(ckpt: Checkpoint, arch: str | None) -> Plan:
    """Decide variant, config and preprocessing for a torchvision checkpoint."""
    num_labels = count_classes(ckpt.tensors, "classifier.1.bias")
    if arch:
        variant, tag = parse_arch(arch)
        return _plan_for(variant, tag, num_labels)
    return choose_variant(ckpt.tensors, B_VARIANTS + V2_VARIANTS, lambda v: _plan_for(v, None, num_labels),
                          source=NAME)


def reference_output(ckpt: Checkpoint, plan: Plan, raw: torch.Tensor, pixel_values: torch.Tensor
                     ) -> tuple[torch.Tensor, str]:
    """Run torchvision's own model with the checkpoint on ``pixel_values``."""
    import torchvision
    from torchvision import models

    variant, _ = parse_arch(plan.arch)
    num_classes = plan.config.num_labels or 1000
    model = getattr(models, f"efficientnet_{variant}")(weights=None, num_classes=num_classes).eval()
    state = dict(ckpt.tensors)
    if not plan.config.num_labels:
        model.classifier = torch.nn.Identity()  # headless: compare the pooled features
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(pixel_values)
    return out, f"torchvision {torchvision.__version__.split('+')[0]} efficientnet_{variant}"

