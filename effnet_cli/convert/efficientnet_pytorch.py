"""lukemelas' ``efficientnet_pytorch`` (B0…B7) and the same layout for Lite (``efficientnet_lite_pytorch``).

Both packages mirror the TensorFlow reference: TF-'same' padding (their
``Conv2dStaticSamePadding`` computes it for the ``image_size`` the model was built
for; we compute it for the actual input, which is the same at that size and
right at every other), batch-norm eps 1e-3, and a flat block list
``_blocks.<n>`` with ``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``,
``_se_reduce``/``_se_expand``, ``_project_conv``/``_bn2``; stem ``_conv_stem``/``_bn0``,
head ``_conv_head``/``_bn1``, classifier ``_fc``.

Lite checkpoints (no ``_se_*`` tensors; ``efficientnet-lite0``…``lite4``) are
conversions of the TF-Lite weights, which were trained on inputs scaled to
[-1, 1] ((x - 127) / 128). The measured evidence is in docs/weights.md.

Preprocessing: B0-B7 use ImageNet mean/std after resizing the shorter side to the
native size (bicubic) and center-cropping it, as the package's ImageNet example
evaluates; Lite uses TF-Lite's inputs, the shorter side resized to size + 32
(bilinear) and a center crop, the choice that the photos in docs/weights.md support.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import torch

from effnet_cli.core.config import VARIANTS, BlockSpec, EfficientNetConfig
from effnet_cli.convert.common import (
    B_VARIANTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_VARIANTS,
    Checkpoint,
    Plan,
    Rename,
    build_table,
    choose_variant,
    count_classes,
    labels_note,
    preprocessor_config,
    variant_config,
)
from effnet_cli.errors import ConfigError
from effnet_cli.weights import bundled
from effnet_cli.weights.presets import LITE_MEAN, LITE_STD, tf_lite_preprocessing  # noqa: F401 - LITE_* re-exported

NAME = "efficientnet_pytorch"
PACKAGE = "efficientnet_pytorch"

# The module names are the bundled Lite0 file's, so they are written once, with it.
STEM_HEAD, BLOCK = bundled.STEM_HEAD, bundled.BLOCK


def matches(keys: Collection[str]) -> bool:
    """Whether a state dict has efficientnet_pytorch's layout (B or Lite)."""
    return "_conv_stem.weight" in keys and "_blocks.0._depthwise_conv.weight" in keys


def parse_arch(arch: str) -> str:
    """``efficientnet-b2`` / ``efficientnet_lite0`` / ``b2`` -> our variant name (``b2``, ``lite0``)."""
    match = re.fullmatch(r"(?:efficientnet[-_])?(b[0-7]|lite[0-4])", arch.strip().lower())
    if not match:
        raise ConfigError(f"efficientnet_pytorch arch must be efficientnet-b0…b7 or efficientnet-lite0…4, got {arch!r}.")
    return match.group(1)


def preprocessing(variant: str) -> dict[str, Any]:
    """The eval preprocessing for these weights (see the module docstring)."""
    size = VARIANTS[variant].image_size
    if VARIANTS[variant].lite:
        return tf_lite_preprocessing(size)
    return preprocessor_config(crop=size, resize=size, resample="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _block_parts(block: BlockSpec, j: int) -> dict[str, str]:
    return {part: f"{bundled.BLOCK_PREFIX}{block.index}.{path}" for part, path in BLOCK.items()}


def table(config: EfficientNetConfig) -> list[Rename]:
    """The rename table (our key <- efficientnet_pytorch key) for ``config``."""
    return build_table(config, stem_head=STEM_HEAD, block_parts=_block_parts)


def _plan_for(variant: str, num_labels: int) -> Plan:
    # from_variant gives Lite its builder semantics: relu6, no squeeze-excite, fixed stem/head.
    config = variant_config(variant, num_labels=num_labels, padding_mode="same", batch_norm_eps=1e-3)
    notes = [n for n in (labels_note(num_labels),) if n]
    return Plan(NAME, f"efficientnet-{variant}", config, table(config), preprocessing(variant), notes=notes)


def plan(ckpt: Checkpoint, arch: str | None) -> Plan:
    """Decide variant, config and preprocessing for an efficientnet_pytorch checkpoint."""
    num_labels = count_classes(ckpt.tensors, "_fc.bias")
    if arch:
        return _plan_for(parse_arch(arch), num_labels)
    lite = not any("._se_reduce." in k for k in ckpt.tensors)
    return choose_variant(ckpt.tensors, LITE_VARIANTS if lite else B_VARIANTS,
                          lambda v: _plan_for(v, num_labels), source=NAME)


def reference_output(ckpt: Checkpoint, plan: Plan, raw: torch.Tensor, pixel_values: torch.Tensor
                     ) -> tuple[torch.Tensor, str]:
    """Run efficientnet_pytorch's (or, for Lite, efficientnet_lite_pytorch's) model on ``pixel_values``.

    The model is built for the input's size, so its static TF-'same' padding is
    the padding TF would use there.
    """
    variant = parse_arch(plan.arch)
    if VARIANTS[variant].lite:
        import efficientnet_lite_pytorch as package
    else:
        import efficientnet_pytorch as package
    size = tuple(pixel_values.shape[-2:])
    headless = not plan.config.num_labels
    model = package.EfficientNet.from_name(f"efficientnet-{variant}", image_size=size,
                                           num_classes=plan.config.num_labels or 1000).eval()
    result = model.load_state_dict(dict(ckpt.tensors), strict=not headless)
    if headless and (result.unexpected_keys or set(result.missing_keys) - {"_fc.weight", "_fc.bias"}):
        raise RuntimeError(f"{package.__name__} could not load the checkpoint ({result})")
    with torch.no_grad():
        out = model.extract_features(pixel_values).mean(dim=(2, 3)) if headless else model(pixel_values)
    version = getattr(package, "__version__", "")
    return out, f"{package.__name__} {version} efficientnet-{variant}".replace("  ", " ")
