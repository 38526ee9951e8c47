"""timm's EfficientNet checkpoints as data: key layout, pretrained-config preprocessing, hub repositories.

Used by ``effnet convert --from timm`` and by the loader, which turns a timm hub
repository (``timm/tf_efficientnetv2_s.in21k_ft_in1k``: ``config.json`` with
``architecture`` and ``pretrained_cfg``, and ``model.safetensors``) into effnet's
layout on first use and keeps the result in effnet's cache, named after the
repository and its commit. No model is built here (this is the file layer): the
tensors are renamed by table, the config and preprocessing are written as JSON,
and every tensor's name and shape is checked when the directory is loaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet_cli.errors import LoadError
from effnet_cli.weights.files import CONFIG_NAME, PROCESSOR_NAME, SAFETENSORS_NAME
from effnet_cli.weights.layout import OUR_PARTS
from effnet_cli.weights.presets import IMAGENET_MEAN, IMAGENET_STD, crop_pct_preprocessing, imagenet_labels, preset_json
from effnet_cli.weights.state_dict import read_state_dict, save_state_dict
from effnet_cli.weights.variants import VARIANTS
from effnet_cli.weights.variants_v2 import BODIES, TIMM_V2_ARCHS, body_lists

if TYPE_CHECKING:
    import torch

STEM_HEAD = {"stem_conv": "conv_stem", "stem_bn": "bn1", "head_conv": "conv_head", "head_bn": "bn2",
             "classifier": "classifier"}
# timm's DepthwiseSeparableConv (expand ratio 1) and InvertedResidual blocks.
BLOCK_DS = {"dw_conv": "conv_dw", "dw_bn": "bn1", "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
            "project_conv": "conv_pw", "project_bn": "bn2"}
BLOCK_IR = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dw_conv": "conv_dw", "dw_bn": "bn2",
            "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand", "project_conv": "conv_pwl",
            "project_bn": "bn3"}
# EfficientNetV2's ConvBnAct ("conv") and EdgeResidual ("fused") blocks.
BLOCK_CN = {"expand_conv": "conv", "expand_bn": "bn1"}
BLOCK_ER = {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl", "project_bn": "bn2"}




@dataclass(frozen=True)
class TimmCfg:
    """The eval preprocessing fields of a timm pretrained config."""

    tag: str
    size: int
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]



def cfg_from(data: dict[str, Any], tag: str) -> TimmCfg:
    """The eval preprocessing fields of a timm pretrained config (a dict, as in a hub config.json)."""
    size = data.get("input_size") or (3, 224, 224)  # timm evaluates at input_size unless told otherwise
    return TimmCfg(
        tag=tag,
        size=int(size[-1]),
        crop_pct=float(data.get("crop_pct") or 0.875),
        crop_mode=str(data.get("crop_mode") or "center"),
        interpolation=str(data.get("interpolation") or "bicubic"),
        mean=tuple(float(v) for v in data.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in data.get("std", IMAGENET_STD)),
    )


def preprocessing(cfg: TimmCfg) -> dict[str, Any]:
    """timm's eval transform for a pretrained config, as a preprocessor config."""
    resample = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
    if cfg.crop_mode == "squash":
        # Both sides to size / crop_pct (aspect ratio not kept), then the center crop.
        return crop_pct_preprocessing(cfg.size, cfg.crop_pct, resize_mode="exact", resample=resample,
                                      mean=cfg.mean, std=cfg.std)
    # "center" (and "border", which our processor cannot pad; center is its closest).
    return crop_pct_preprocessing(cfg.size, cfg.crop_pct, resample=resample, mean=cfg.mean, std=cfg.std)



# Which of timm's block classes a block is, from the module names it holds.
# (modules it must have, template), first match wins: DepthwiseSeparable also has a conv_pw, as its projection.
_BLOCK_KINDS = (({"conv_dw", "conv_pwl"}, BLOCK_IR), ({"conv_dw"}, BLOCK_DS), ({"conv_exp"}, BLOCK_ER),
                ({"conv"}, BLOCK_CN))
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.([^.]+)")
_V1_ARCH = re.compile(r"(tf_)?efficientnet_(b[0-7]|lite[0-4])")


def is_timm_layout(directory: Path) -> bool:
    """Whether a downloaded repository is in timm's layout (its config.json names an ``architecture``)."""
    try:
        data = json.loads((directory / CONFIG_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "architecture" in data and "model_type" not in data


def rename_state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's EfficientNet (V1 or V2) tensors under effnet's names; blocks numbered in order, each by its kind."""
    stem_head = {theirs: OUR_PARTS[part] for part, theirs in STEM_HEAD.items()}
    positions = sorted({(int(m[1]), int(m[2])) for key in tensors if (m := _BLOCK_KEY.fullmatch(key))})
    index = {position: i for i, position in enumerate(positions)}
    kinds = {}
    for stage, j in positions:
        present = {m[3] for key in tensors if (m := _BLOCK_KEY.fullmatch(key)) and (int(m[1]), int(m[2])) == (stage, j)}
        template = next((t for needed, t in _BLOCK_KINDS if needed <= present), None)
        if template is None:
            raise LoadError(f"blocks.{stage}.{j} is not a block of a timm EfficientNet this version of effnet knows.")
        kinds[stage, j] = {theirs: ours for ours, theirs in template.items()}
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        module, _, param = key.rpartition(".")
        match = _BLOCK_KEY.fullmatch(key)
        if match and match[3] in kinds[int(match[1]), int(match[2])]:
            part = kinds[int(match[1]), int(match[2])][match[3]]
            ours = OUR_PARTS[part].format(i=index[int(match[1]), int(match[2])])
        elif module in stem_head:
            ours = stem_head[module]
        else:
            raise LoadError(f"{key} is not part of a timm EfficientNet this version of effnet knows.")
        renamed[f"{ours}.{param}"] = tensor
    return renamed


def check_architecture(architecture: str) -> None:
    """Raise :class:`LoadError` unless a timm architecture (``tf_efficientnetv2_s.in21k_ft_in1k``…) is one effnet builds."""
    name = architecture.split(".")[0].lower()
    if name not in TIMM_V2_ARCHS and _V1_ARCH.fullmatch(name) is None:
        raise LoadError(f"timm's {architecture} is not an EfficientNet effnet can load (V1 B0-B7 and Lite, or "
                        f"V2: {', '.join(TIMM_V2_ARCHS)}).")


def effnet_config(architecture: str, num_labels: int, image_size: int) -> dict[str, Any]:
    """effnet's config.json for a timm architecture (``tf_efficientnetv2_s``, ``efficientnet_b3``…)."""
    name = architecture.split(".")[0].lower()
    tf_port = name.startswith("tf_")
    # TF ports: TF-'same' padding and TF's eps; timm's own weights: symmetric padding, torch's eps.
    config: dict[str, Any] = {"padding_mode": "same" if tf_port else "symmetric",
                              "batch_norm_eps": 1e-3 if tf_port else 1e-5, "image_size": image_size}
    check_architecture(name)
    v1 = _V1_ARCH.fullmatch(name)
    if name in TIMM_V2_ARCHS:
        body, width, depth = TIMM_V2_ARCHS[name]
        config.update(model_type="efficientnet_v2", **body_lists(BODIES[body]), width_coefficient=width,
                      depth_coefficient=depth, hidden_act="silu", batch_norm_momentum=0.1)
    elif v1 is not None:
        variant = VARIANTS[v1[2]]
        config.update(model_type="efficientnet", width_coefficient=variant.width_coefficient,
                      depth_coefficient=variant.depth_coefficient, dropout_rate=variant.dropout_rate)
        if variant.lite:
            config.update(hidden_act="relu6", use_squeeze_excite=False, fix_stem_and_head=True)
    if num_labels == 1000:
        labels = imagenet_labels()
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    else:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
    return config


def write_converted(snapshot: Path, directory: Path) -> None:
    """Write effnet's config.json, model.safetensors and preprocessor_config.json for a timm hub snapshot."""
    from effnet_cli.output import write_text

    data = json.loads((snapshot / CONFIG_NAME).read_text("utf-8"))
    architecture = str(data["architecture"])
    check_architecture(architecture)  # before reading the tensors: the cheap, clear refusal
    pretrained = data.get("pretrained_cfg") or {}
    cfg = cfg_from(pretrained, str(pretrained.get("tag", "")))
    tensors = rename_state_dict(read_state_dict(snapshot / SAFETENSORS_NAME))
    bias = tensors.get(OUR_PARTS["classifier"] + ".bias")
    config = effnet_config(architecture, int(bias.shape[0]) if bias is not None else 0, cfg.size)
    write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    save_state_dict(tensors, directory / SAFETENSORS_NAME)
    write_text(directory / PROCESSOR_NAME, preset_json(preprocessing(cfg)))


def ensure_timm_converted(snapshot: Path, cache_dir: Path, repo_id: str) -> Path:
    """effnet's directory for a timm hub snapshot, converted into ``cache_dir`` on first use.

    Named after the repository and the snapshot's commit, so a new upload gets a new
    directory; written as the bundled Lite0 is (a private temporary directory renamed
    into place), so a killed or racing conversion never leaves a half-written one.
    """
    from effnet_cli.weights.bundled import ensure_converted

    final = Path(cache_dir).expanduser() / "timm" / f"{repo_id.replace('/', '--')}-{snapshot.name[:12]}"
    return ensure_converted(final, lambda staged: write_converted(snapshot, staged), what=f"{repo_id}")
