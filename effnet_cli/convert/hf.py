"""Hugging Face transformers' EfficientNet checkpoints (and effnet's own directories).

Our module names are transformers' keys, so the rename table is the identity
(``efficientnet.embeddings.convolution.weight`` -> the same); a base-model
checkpoint (``EfficientNetModel``, keys without ``efficientnet.``) is accepted and
converts to a headless classifier. The source can be a directory with
``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``, or one of those
files. The directory's ``config.json`` and ``preprocessor_config.json`` are kept;
without a config the variant is inferred from the shapes with transformers'
fixed padding, and without a preprocessor config the hub's google/efficientnet-b*
preprocessing is written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from effnet_cli.core.config import VARIANTS, BlockSpec, EfficientNetConfig
from effnet_cli.convert.common import (
    B_VARIANTS,
    LITE_VARIANTS,
    OUR_PARTS,
    Checkpoint,
    Plan,
    Rename,
    ReferenceUnavailable,
    build_table,
    choose_variant,
    count_classes,
    labels_note,
    variant_config,
)
from effnet_cli.errors import ConfigError, WeightsError
from effnet_cli.weights.files import CONFIG_NAME, PROCESSOR_NAME, WEIGHT_NAMES
from effnet_cli.weights.presets import hub_preprocessing
from effnet_cli.weights.state_dict import read_state_dict

NAME = "hf"
PACKAGE = "transformers"

PREFIX = "efficientnet."
WEIGHT_FILES = WEIGHT_NAMES


def matches(keys: Collection[str]) -> bool:
    """Whether a state dict has transformers' EfficientNet keys (classifier or base model)."""
    return f"{PREFIX}embeddings.convolution.weight" in keys or "embeddings.convolution.weight" in keys


def read(path: Path) -> Checkpoint:
    """Read a transformers checkpoint directory or weights file, with its JSON configs when present."""
    directory = path if path.is_dir() else path.parent
    if path.is_dir():
        found = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
        if not found:
            raise WeightsError(f"{path} has neither {' nor '.join(WEIGHT_FILES)}.")
        path = found[0]
    meta: dict[str, Any] = {}
    for key, name in (("hf_config", CONFIG_NAME), ("hf_preprocessor", PROCESSOR_NAME)):
        file = directory / name
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise WeightsError(f"{file} is not readable JSON ({exc}).") from None
            meta[key] = data
    config = meta.get("hf_config")
    if config is not None and config.get("model_type") != "efficientnet":
        meta.pop("hf_config")  # a config.json of something else (e.g. timm's) says nothing about us
        meta.pop("hf_preprocessor", None)
    return Checkpoint(path, read_state_dict(path), meta)


def table(config: EfficientNetConfig, *, prefixed: bool = True) -> list[Rename]:
    """The identity rename table; ``prefixed=False`` for base-model checkpoints without ``efficientnet.``."""
    def source(part: str, index: int | None = None) -> str:
        name = OUR_PARTS[part].format(i=index)
        return name if prefixed else name.removeprefix(PREFIX)

    stem_head = {part: source(part) for part in ("stem_conv", "stem_bn", "head_conv", "head_bn", "classifier")}

    def block_parts(block: BlockSpec, j: int) -> dict[str, str]:
        return {part: source(part, block.index) for part in OUR_PARTS if "{i}" in OUR_PARTS[part]}

    return build_table(config, stem_head=stem_head, block_parts=block_parts)


def plan(ckpt: Checkpoint, arch: str | None) -> Plan:
    """Config from the checkpoint's config.json (or the shapes), preprocessing from its preprocessor config."""
    prefixed = any(k.startswith(PREFIX) for k in ckpt.tensors)
    num_labels = count_classes(ckpt.tensors, "classifier.bias")
    data = ckpt.meta.get("hf_config")
    if data is not None:
        config = EfficientNetConfig.from_dict(data)
        if num_labels != config.num_labels:
            if num_labels:
                raise WeightsError(f"{ckpt.path}: the classifier has {num_labels} outputs but config.json "
                                   f"lists {config.num_labels} labels.")
            config = dataclasses.replace(config, num_labels=0, id2label=None, label2id=None)
        name = arch or _describe(config)
        made = Plan(NAME, name, config, table(config, prefixed=prefixed), {})
    elif arch:
        variant = arch.lower().removeprefix("google/").removeprefix("efficientnet-").removeprefix("efficientnet_")
        if variant not in VARIANTS:
            raise ConfigError(f"hf arch must be one of {', '.join(VARIANTS)} (or google/efficientnet-b*), got {arch!r}.")
        made = _plan_for(variant, num_labels, prefixed)
    else:
        lite = not any(".squeeze_excite." in k for k in ckpt.tensors)
        made = choose_variant(ckpt.tensors, LITE_VARIANTS if lite else B_VARIANTS,
                              lambda v: _plan_for(v, num_labels, prefixed), source=NAME)
    made.preprocessing = ckpt.meta.get("hf_preprocessor") or hub_preprocessing(made.config.image_size)
    made.notes += [n for n in (labels_note(made.config.num_labels),) if n]
    return made


def _describe(config: EfficientNetConfig) -> str:
    """The published variant a config.json describes, for reports ("efficientnet-b3"), if any."""
    for name, variant in VARIANTS.items():
        if (variant.width_coefficient, variant.depth_coefficient, variant.lite) == (
                config.width_coefficient, config.depth_coefficient, config.fix_stem_and_head):
            return f"efficientnet-{name}"
    return "EfficientNet (config.json)"


def _plan_for(variant: str, num_labels: int, prefixed: bool) -> Plan:
    # transformers' own static padding for B-variants; Lite keeps its TF-'same' default.
    config = variant_config(variant, num_labels=num_labels)
    return Plan(NAME, f"efficientnet-{variant}", config, table(config, prefixed=prefixed), {})


def reference_output(ckpt: Checkpoint, plan: Plan, raw: torch.Tensor, pixel_values: torch.Tensor
                     ) -> tuple[torch.Tensor, str]:
    """Run transformers' EfficientNet with the checkpoint on ``pixel_values``."""
    import transformers

    if plan.config.padding_mode != "fixed" or not plan.config.use_squeeze_excite:
        raise ReferenceUnavailable("transformers has no EfficientNet with this padding or without squeeze-excite")
    hf_config = transformers.EfficientNetConfig.from_dict(plan.config.to_dict())
    headless = not plan.config.num_labels
    cls = transformers.EfficientNetModel if headless else transformers.EfficientNetForImageClassification
    model = cls(hf_config).eval()
    state = {k.removeprefix(PREFIX) if headless else k: v for k, v in ckpt.tensors.items()}
    if not headless and not any(k.startswith(PREFIX) for k in state):
        state = {PREFIX + k: v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(pixel_values)
    result = out.pooler_output.flatten(1) if headless else out.logits
    return result, f"transformers {transformers.__version__} {cls.__name__}"
