"""timm's EfficientNets: ``efficientnet_b0…b7``, ``tf_efficientnet_b0…b7``, ``(tf_)efficientnet_lite0…4``,
and the EfficientNetV2s ``tf_efficientnetv2_b0…b3/s/m/l/xl``, ``efficientnetv2_s/m/l/xl``, ``efficientnetv2_rw_t/s``.

Two families share one key layout but not their numerics:

* ``efficientnet_*`` — timm's own training: symmetric padding (k//2), batch-norm eps 1e-5.
* ``tf_efficientnet_*`` — ports of the TensorFlow weights: TF-'same' padding computed
  from the input size, eps 1e-3.

The file cannot say which one it is, so when only shapes are known the
architecture must be given (``--arch tf_efficientnet_b3``). A timm hub folder's
``config.json`` names it (``"architecture"``) and carries the pretrained config.

Preprocessing comes from timm's pretrained config of the architecture (its default
tag, or ``arch.tag`` as in ``tf_efficientnet_b3.ap_in1k``): resize the shorter side
to ``floor(size / crop_pct)``, center-crop ``size``, with its interpolation and
mean/std. Without timm installed the small table below (timm 1.0's default tags) is used.

Keys: ``conv_stem``, ``bn1``, ``blocks.<stage>.<j>.(conv_pw|conv_dw|se.conv_reduce|...)``,
``conv_head``, ``bn2``, ``classifier``; V2's plain conv blocks (``ConvBnAct``) hold ``conv``/``bn1``,
its Fused-MBConv blocks (``EdgeResidual``) ``conv_exp``/``bn1``/``conv_pwl``/``bn2``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from effnet_cli.core.config import BlockSpec, EfficientNetConfig
from effnet_cli.convert.common import (
    B_VARIANTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    LITE_VARIANTS,
    Checkpoint,
    Plan,
    Rename,
    build_table,
    choose_variant,
    count_classes,
    crop_pct_preprocessing,
    labels_note,
    v2_config,
    variant_config,
)
from effnet_cli.errors import ConfigError
from effnet_cli.weights.timm_layout import (  # noqa: F401 - the layout tables are this module's vocabulary
    BLOCK_CN,
    BLOCK_DS,
    BLOCK_ER,
    BLOCK_IR,
    STEM_HEAD,
    preprocessing,
)
from effnet_cli.weights.timm_layout import TimmCfg as _Cfg
from effnet_cli.weights.timm_layout import cfg_from as _cfg_from
from effnet_cli.weights.variants_v2 import TIMM_V2_ARCHS as V2_ARCHS

NAME = "timm"
PACKAGE = "timm"

_IN, _INC = (IMAGENET_MEAN, IMAGENET_STD), (INCEPTION_MEAN, INCEPTION_STD)
# timm 1.0's default pretrained tag per architecture (used only when timm is not installed).
_FALLBACK = {
    "efficientnet_b0": _Cfg("ra_in1k", 224, 0.875, "center", "bicubic", *_IN),
    "efficientnet_b1": _Cfg("ra4_e3600_r240_in1k", 240, 0.9, "center", "bicubic", *_INC),
    "efficientnet_b2": _Cfg("ra_in1k", 256, 0.875, "center", "bicubic", *_IN),
    "efficientnet_b3": _Cfg("ra2_in1k", 288, 0.875, "center", "bicubic", *_IN),
    "efficientnet_b4": _Cfg("ra2_in1k", 320, 0.875, "center", "bicubic", *_IN),
    "efficientnet_b5": _Cfg("sw_in12k_ft_in1k", 448, 1.0, "squash", "bicubic", *_IN),
    "efficientnet_b6": _Cfg("untrained", 528, 0.942, "center", "bicubic", *_IN),
    "efficientnet_b7": _Cfg("untrained", 600, 0.949, "center", "bicubic", *_IN),
    "tf_efficientnet_b0": _Cfg("ns_jft_in1k", 224, 0.875, "center", "bicubic", *_IN),
    "tf_efficientnet_b1": _Cfg("ns_jft_in1k", 240, 0.882, "center", "bicubic", *_IN),
    "tf_efficientnet_b2": _Cfg("ns_jft_in1k", 260, 0.89, "center", "bicubic", *_IN),
    "tf_efficientnet_b3": _Cfg("ns_jft_in1k", 300, 0.904, "center", "bicubic", *_IN),
    "tf_efficientnet_b4": _Cfg("ns_jft_in1k", 380, 0.922, "center", "bicubic", *_IN),
    "tf_efficientnet_b5": _Cfg("ns_jft_in1k", 456, 0.934, "center", "bicubic", *_IN),
    "tf_efficientnet_b6": _Cfg("ns_jft_in1k", 528, 0.942, "center", "bicubic", *_IN),
    "tf_efficientnet_b7": _Cfg("ns_jft_in1k", 600, 0.949, "center", "bicubic", *_IN),
    "efficientnet_lite0": _Cfg("ra_in1k", 224, 0.875, "center", "bicubic", *_IN),
    "efficientnet_lite1": _Cfg("untrained", 240, 0.882, "center", "bicubic", *_IN),
    "efficientnet_lite2": _Cfg("untrained", 260, 0.89, "center", "bicubic", *_IN),
    "efficientnet_lite3": _Cfg("untrained", 300, 0.904, "center", "bicubic", *_IN),
    "efficientnet_lite4": _Cfg("untrained", 380, 0.922, "center", "bicubic", *_IN),
    "tf_efficientnet_lite0": _Cfg("in1k", 224, 0.875, "center", "bicubic", *_INC),
    "tf_efficientnet_lite1": _Cfg("in1k", 240, 0.882, "center", "bicubic", *_INC),
    "tf_efficientnet_lite2": _Cfg("in1k", 260, 0.89, "center", "bicubic", *_INC),
    "tf_efficientnet_lite3": _Cfg("in1k", 300, 0.904, "center", "bilinear", *_INC),
    "tf_efficientnet_lite4": _Cfg("in1k", 380, 0.92, "center", "bilinear", *_INC),
}

_ARCH = re.compile(r"(tf_)?efficientnet_(b[0-7]|lite[0-4])")


def matches(keys: Collection[str]) -> bool:
    """Whether a state dict has timm's EfficientNet layout."""
    first = ("blocks.0.0.conv_dw.weight", "blocks.0.0.conv.weight", "blocks.0.0.conv_exp.weight")  # V1, V2, V2 rw
    return "conv_stem.weight" in keys and any(key in keys for key in first)


def parse_arch(arch: str) -> tuple[str, str, str | None]:
    """``tf_efficientnet_b3.ap_in1k`` -> (``tf_efficientnet_b3``, ``b3``, ``ap_in1k``); V2 names come back whole."""
    name, _, tag = arch.strip().partition(".")
    if name.lower() in V2_ARCHS:
        return name.lower(), name.lower(), tag or None
    match = _ARCH.fullmatch(name.lower())
    if not match:
        raise ConfigError(
            f"timm arch must be efficientnet_b0…b7, tf_efficientnet_b0…b7, efficientnet_lite0…4, "
            f"tf_efficientnet_lite0…4 or one of {', '.join(V2_ARCHS)} (optionally with .tag), got {arch!r}."
        )
    return name.lower(), match.group(2), tag or None


def _pretrained_cfg(name: str, tag: str | None, from_file: dict[str, Any] | None) -> _Cfg:
    """The eval preprocessing for ``name[.tag]``: the file's own cfg, else timm's, else our table."""
    if from_file:
        return _cfg_from(from_file, tag or str(from_file.get("tag", "")))
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        get_pretrained_cfg = None
    if get_pretrained_cfg is not None:
        cfg = get_pretrained_cfg(f"{name}.{tag}" if tag else name)
        if cfg is None:
            raise ConfigError(f"timm has no pretrained config {name}.{tag}; drop the tag or use one timm lists.")
        return _cfg_from(cfg.to_dict(), cfg.tag or "")
    if name not in _FALLBACK:
        raise ConfigError(f"timm is not installed, so the preprocessing of {name} is unknown; install timm.")
    if tag and tag != _FALLBACK[name].tag:
        raise ConfigError(f"timm is not installed, so the preprocessing of {name}.{tag} is unknown; install timm "
                          f"or drop the tag to use {name}.{_FALLBACK[name].tag}'s.")
    return _FALLBACK[name]


def _block_parts(block: BlockSpec, j: int) -> dict[str, str]:
    if block.block_type != "mbconv":
        template = BLOCK_CN if block.block_type == "conv" else BLOCK_ER
    else:
        template = BLOCK_IR if block.expand_ratio != 1 else BLOCK_DS
    return {part: f"blocks.{block.stage}.{j}.{path}" for part, path in template.items()}


def table(config: EfficientNetConfig) -> list[Rename]:
    """The rename table (our key <- timm key) for ``config``."""
    return build_table(config, stem_head=STEM_HEAD, block_parts=_block_parts)


def _plan_for(arch: str, num_labels: int, file_cfg: dict[str, Any] | None = None) -> Plan:
    name, variant, tag = parse_arch(arch)
    cfg = _pretrained_cfg(name, tag, file_cfg)
    tf_port = name.startswith("tf_")
    numerics: dict[str, Any] = dict(padding_mode="same" if tf_port else "symmetric",
                                    batch_norm_eps=1e-3 if tf_port else 1e-5)
    if name in V2_ARCHS:
        body, width, depth = V2_ARCHS[name]
        config = v2_config(body, width=width, depth=depth, num_labels=num_labels, image_size=cfg.size, **numerics)
    else:
        config = variant_config(variant, num_labels=num_labels, image_size=cfg.size, **numerics)
    notes = [n for n in (labels_note(num_labels),) if n]
    if cfg.crop_mode not in ("center", "squash"):
        notes.append(f"timm's crop_mode {cfg.crop_mode!r} is approximated by a center crop.")
    full = f"{name}.{cfg.tag}" if cfg.tag else name
    return Plan(NAME, full, config, table(config), preprocessing(cfg), notes=notes)


def plan(ckpt: Checkpoint, arch: str | None) -> Plan:
    """Decide architecture, config and preprocessing for a timm checkpoint."""
    num_labels = count_classes(ckpt.tensors, "classifier.bias")
    file_config = ckpt.meta.get("timm_config") or {}
    file_cfg = file_config.get("pretrained_cfg")
    if arch is None and file_config.get("architecture"):
        arch = str(file_config["architecture"])
        if file_cfg and file_cfg.get("tag") and "." not in arch:
            arch = f"{arch}.{file_cfg['tag']}"
    if arch:
        return _plan_for(arch, num_labels, file_cfg if file_config.get("architecture") else None)
    # Shapes give the variant; they cannot tell timm's own weights from the TF ports.
    lite = not any(".se." in k for k in ckpt.tensors)
    candidates = LITE_VARIANTS if lite else B_VARIANTS
    found = choose_variant(ckpt.tensors, candidates,
                           lambda v: _plan_for(f"tf_efficientnet_{v}", num_labels), source=NAME)
    variant = found.arch.split(".")[0].removeprefix("tf_efficientnet_")
    raise ConfigError(
        f"This timm checkpoint has the shapes of efficientnet_{variant}, but timm's efficientnet_{variant} "
        f"(symmetric padding, eps 1e-5) and tf_efficientnet_{variant} (TF-'same' padding, eps 1e-3) share them; "
        f"pass --arch efficientnet_{variant} or --arch tf_efficientnet_{variant}."
    )


def reference_output(ckpt: Checkpoint, plan: Plan, raw: torch.Tensor, pixel_values: torch.Tensor
                     ) -> tuple[torch.Tensor, str]:
    """Run timm's own model with the checkpoint on ``pixel_values``."""
    import timm

    name, _, _ = parse_arch(plan.arch)
    model = timm.create_model(name, pretrained=False, num_classes=plan.config.num_labels).eval()
    model.load_state_dict(dict(ckpt.tensors), strict=True)
    with torch.no_grad():
        out = model(pixel_values)  # num_classes=0: timm returns the pooled features
    return out, f"timm {timm.__version__} {name}"
