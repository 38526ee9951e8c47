"""The published EfficientNetV2s (Tan & Le, 2021): block tables, resolutions and hub repositories.

Each body is a list of typed stage rows, the numbers of the TF reference
(``google/automl/efficientnetv2``) as timm's ``_gen_efficientnetv2_*`` and
torchvision's ``_efficientnet_conf`` restate them. The B0-B3 bodies are the
"base" table scaled by width and depth; S, M, L and XL have their own tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class V2Stage:
    """One unscaled stage of an EfficientNetV2 body."""

    block_type: str  # "conv" (k×k conv only), "fused" (Fused-MBConv) or "mbconv" (MBConv with squeeze-excite)
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int


@dataclass(frozen=True)
class V2Body:
    """An unscaled EfficientNetV2 network: stem width, stages, head width and its channel rounding."""

    stem_channels: int
    stages: tuple[V2Stage, ...]
    num_features: int = 1280  # head width before width scaling
    round_limit: float = 0.9  # B0-B3 round channels to the nearest multiple of 8 only (0.0)


def _stages(*rows: tuple[str, int, int, int, int, int]) -> tuple[V2Stage, ...]:
    return tuple(V2Stage(*row) for row in rows)


# (type, repeats, kernel, stride, expansion, output channels), stage by stage.
BODIES: dict[str, V2Body] = {
    "base": V2Body(32, _stages(("conv", 1, 3, 1, 1, 16), ("fused", 2, 3, 2, 4, 32), ("fused", 2, 3, 2, 4, 48),
                               ("mbconv", 3, 3, 2, 4, 96), ("mbconv", 5, 3, 1, 6, 112), ("mbconv", 8, 3, 2, 6, 192)),
                   round_limit=0.0),
    "s": V2Body(24, _stages(("conv", 2, 3, 1, 1, 24), ("fused", 4, 3, 2, 4, 48), ("fused", 4, 3, 2, 4, 64),
                            ("mbconv", 6, 3, 2, 4, 128), ("mbconv", 9, 3, 1, 6, 160), ("mbconv", 15, 3, 2, 6, 256))),
    "m": V2Body(24, _stages(("conv", 3, 3, 1, 1, 24), ("fused", 5, 3, 2, 4, 48), ("fused", 5, 3, 2, 4, 80),
                            ("mbconv", 7, 3, 2, 4, 160), ("mbconv", 14, 3, 1, 6, 176), ("mbconv", 18, 3, 2, 6, 304),
                            ("mbconv", 5, 3, 1, 6, 512))),
    "l": V2Body(32, _stages(("conv", 4, 3, 1, 1, 32), ("fused", 7, 3, 2, 4, 64), ("fused", 7, 3, 2, 4, 96),
                            ("mbconv", 10, 3, 2, 4, 192), ("mbconv", 19, 3, 1, 6, 224), ("mbconv", 25, 3, 2, 6, 384),
                            ("mbconv", 7, 3, 1, 6, 640))),
    "xl": V2Body(32, _stages(("conv", 4, 3, 1, 1, 32), ("fused", 8, 3, 2, 4, 64), ("fused", 8, 3, 2, 4, 96),
                             ("mbconv", 16, 3, 2, 4, 192), ("mbconv", 24, 3, 1, 6, 256), ("mbconv", 32, 3, 2, 6, 512),
                             ("mbconv", 8, 3, 1, 6, 640))),
    # Ross Wightman's first V2-S (timm's efficientnetv2_rw_s): a Fused-MBConv first stage, a wider last stage and head.
    "rw_s": V2Body(24, _stages(("fused", 2, 3, 1, 1, 24), ("fused", 4, 3, 2, 4, 48), ("fused", 4, 3, 2, 4, 64),
                               ("mbconv", 6, 3, 2, 4, 128), ("mbconv", 9, 3, 1, 6, 160), ("mbconv", 15, 3, 2, 6, 272)),
                   num_features=1792),
}


def body_lists(body: V2Body) -> dict[str, Any]:
    """The config.json fields of an unscaled body: the per-stage lists, stem, head and rounding."""
    outs = [stage.out_channels for stage in body.stages]
    return dict(
        block_types=[stage.block_type for stage in body.stages],
        kernel_sizes=[stage.kernel_size for stage in body.stages],
        in_channels=[body.stem_channels, *outs[:-1]], out_channels=outs,
        strides=[stage.stride for stage in body.stages],
        num_block_repeats=[stage.repeats for stage in body.stages],
        expand_ratios=[stage.expand_ratio for stage in body.stages],
        num_features=body.num_features, round_limit=body.round_limit,
    )


@dataclass(frozen=True)
class V2Variant:
    """One published EfficientNetV2: its body, scaling, resolutions and the hub weights it resolves to."""

    name: str
    body: str  # key of BODIES
    width_coefficient: float
    depth_coefficient: float
    train_size: int  # the resolution of the last training epochs (progressive resizing ends here)
    image_size: int  # the evaluation resolution: what classify resizes to
    dropout_rate: float
    hub_id: str  # timm's hub repository (ImageNet-21k fine-tuned on 1k where it exists)


V2_VARIANTS: dict[str, V2Variant] = {
    v.name: v
    for v in (
        V2Variant("v2-b0", "base", 1.0, 1.0, 192, 224, 0.2, "timm/tf_efficientnetv2_b0.in1k"),
        V2Variant("v2-b1", "base", 1.0, 1.1, 192, 240, 0.2, "timm/tf_efficientnetv2_b1.in1k"),
        V2Variant("v2-b2", "base", 1.1, 1.2, 208, 260, 0.3, "timm/tf_efficientnetv2_b2.in1k"),
        V2Variant("v2-b3", "base", 1.2, 1.4, 240, 300, 0.3, "timm/tf_efficientnetv2_b3.in21k_ft_in1k"),
        V2Variant("v2-s", "s", 1.0, 1.0, 300, 384, 0.2, "timm/tf_efficientnetv2_s.in21k_ft_in1k"),
        V2Variant("v2-m", "m", 1.0, 1.0, 384, 480, 0.3, "timm/tf_efficientnetv2_m.in21k_ft_in1k"),
        V2Variant("v2-l", "l", 1.0, 1.0, 384, 480, 0.4, "timm/tf_efficientnetv2_l.in21k_ft_in1k"),
        V2Variant("v2-xl", "xl", 1.0, 1.0, 384, 512, 0.4, "timm/tf_efficientnetv2_xl.in21k_ft_in1k"),
    )
}

# timm's V2 architectures: (body, width, depth). tf_* are ports of the TF weights (TF-'same' padding, eps 1e-3),
# the others timm's own (symmetric padding, eps 1e-5).
TIMM_V2_ARCHS: dict[str, tuple[str, float, float]] = {
    **{f"tf_efficientnetv2_{v}": ("base", w, d) for v, w, d in
       (("b0", 1.0, 1.0), ("b1", 1.0, 1.1), ("b2", 1.1, 1.2), ("b3", 1.2, 1.4))},
    **{f"{p}efficientnetv2_{v}": (v, 1.0, 1.0) for p in ("tf_", "") for v in ("s", "m", "l", "xl")},
    "efficientnetv2_rw_t": ("s", 0.8, 0.9),
    "efficientnetv2_rw_s": ("rw_s", 1.0, 1.0),
}
