"""EfficientNetV2 configuration: V1's config.json conventions with Fused-MBConv stages.

:class:`EfficientNetV2Config` is an :class:`~effnet_cli.core.config.EfficientNetConfig`
with its own ``model_type`` (``efficientnet_v2``), one block type per stage
(``block_types``), the head width before scaling (``num_features``) and the channel
rounding of its family (``round_limit``). Labels, unknown keys, ``from_dict`` and
``save_pretrained`` are V1's. The model builds from the same typed stage and block
rows, which carry the block type; squeeze-excite sits in the MBConv stages only, as
in every published V2.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from effnet_cli.core.config import EfficientNetConfig
from effnet_cli.core.hub_mixin import read_json
from effnet_cli.core.scaling import BlockSpec, StageSpec, round_filters
from effnet_cli.core.validation import check_int, check_number
from effnet_cli.errors import ConfigError
from effnet_cli.weights.presets import imagenet_labels
from effnet_cli.weights.variants_v2 import BODIES, V2_VARIANTS, body_lists

BLOCK_TYPES = ("conv", "fused", "mbconv")
V2_PADDING_MODES = ("same", "symmetric")  # V1's "fixed" is the transformers reference's scheme, which has no V2
_S = BODIES["s"]


_S_LISTS = body_lists(_S)


@dataclass(init=False)
class EfficientNetV2Config(EfficientNetConfig):
    """The architecture and head of one EfficientNetV2. Defaults are V2-S with TF-'same' padding and a 2-label head.

    Use :meth:`from_variant` for the published models (``v2-b0`` … ``v2-xl``).
    """

    image_size: int = 384  # evaluation resolution of V2-S
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    kernel_sizes: list[int] = field(default_factory=lambda: list(_S_LISTS["kernel_sizes"]))
    in_channels: list[int] = field(default_factory=lambda: list(_S_LISTS["in_channels"]))  # in_channels[0] is the stem
    out_channels: list[int] = field(default_factory=lambda: list(_S_LISTS["out_channels"]))
    strides: list[int] = field(default_factory=lambda: list(_S_LISTS["strides"]))
    num_block_repeats: list[int] = field(default_factory=lambda: list(_S_LISTS["num_block_repeats"]))
    expand_ratios: list[int] = field(default_factory=lambda: list(_S_LISTS["expand_ratios"]))
    hidden_act: str = "silu"
    batch_norm_momentum: float = 0.1  # torch's convention (timm, torchvision); V1 keeps the reference's 0.99
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2  # stochastic depth (whole samples) of the deepest block, in training
    padding_mode: str = "same"  # "same" for the tf_ and Keras weights, "symmetric" for torchvision's and timm's own
    block_types: list[str] = field(default_factory=lambda: list(_S_LISTS["block_types"]))  # one of BLOCK_TYPES a stage
    num_features: int = 1280  # head width before width scaling
    round_limit: float = 0.9  # channel rounding never goes below this share of the scaled width (0.0 for B0-B3)

    model_type: ClassVar[str] = "efficientnet_v2"
    family_name: ClassVar[str] = "EfficientNetV2"

    def validate(self) -> None:
        """V1's checks, then the V2 fields; raise :class:`ConfigError` naming the first bad one."""
        types = self.block_types
        if not isinstance(types, (list, tuple)) or any(t not in BLOCK_TYPES for t in types):
            raise ConfigError(f"block_types must list one of {', '.join(BLOCK_TYPES)} per stage, got {types!r}.")
        self.block_types = list(types)
        check_int("num_features", self.num_features, minimum=1)
        check_number("round_limit", self.round_limit)
        super().validate()
        if len(self.block_types) != len(self.in_channels):
            raise ConfigError(f"block_types has {len(self.block_types)} entries for {len(self.in_channels)} stages.")
        if self.padding_mode not in V2_PADDING_MODES:
            raise ConfigError(f"padding_mode must be one of {', '.join(V2_PADDING_MODES)} for EfficientNetV2, "
                              f"got {self.padding_mode!r}.")
        for i, (kind, ratio) in enumerate(zip(self.block_types, self.expand_ratios)):
            if kind == "conv" and ratio != 1:
                raise ConfigError(f"Stage {i} is a plain conv stage, whose expand_ratio must be 1, got {ratio}.")

    # ------------------------------------------------------- derived shapes
    def _filters(self, channels: int) -> int:
        return round_filters(channels, self.width_coefficient, self.depth_divisor, self.round_limit)

    @property
    def head_channels(self) -> int:
        """Width of the final 1x1 conv, i.e. of the pooled features (``hidden_dim``)."""
        return self._filters(self.num_features)

    def stages(self) -> list[StageSpec]:
        """V1's scaled stage rows, each with its block type."""
        return [replace(row, block_type=kind) for row, kind in zip(super().stages(), self.block_types)]

    def blocks(self) -> list[BlockSpec]:
        """Every block in order. Unlike V1's, a block keeps its input whenever shapes allow (timm's and TF's rule)."""
        return [replace(b, residual=b.stride == 1 and b.in_channels == b.out_channels) for b in super().blocks()]

    # ---------------------------------------------------------- constructors
    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> EfficientNetV2Config:
        """The published settings of ``v2-b0`` … ``v2-xl``, with the ImageNet-1k head and TF-'same' padding."""
        key = name.lower().replace("_", "-").removeprefix("efficientnet-")
        key = key if key.startswith("v2-") else f"v2-{key.removeprefix('v2')}"
        variant = V2_VARIANTS.get(key)
        if variant is None:
            raise ConfigError(f"Unknown EfficientNetV2 variant {name!r}; choose one of {', '.join(V2_VARIANTS)}.")
        values: dict[str, Any] = dict(
            body_lists(BODIES[variant.body]), image_size=variant.image_size,
            width_coefficient=variant.width_coefficient, depth_coefficient=variant.depth_coefficient,
            dropout_rate=variant.dropout_rate, id2label=dict(enumerate(imagenet_labels())),
        )
        return cls(**{**values, **overrides})

    @classmethod
    def from_body(cls, body: str, **values: Any) -> EfficientNetV2Config:
        """A config of one of :data:`BODIES` (``"s"``, ``"rw_s"``…) with ``values`` (scaling, padding, eps…) set."""
        return cls(**{**body_lists(BODIES[body]), **values})


def is_v2_variant(name: str) -> bool:
    """Whether ``name`` is one of the EfficientNetV2 variant names (``v2-s``…)."""
    return name.lower() in V2_VARIANTS


def config_class_for(data: Any) -> type[EfficientNetConfig]:
    """The config class a parsed config.json's ``model_type`` names (V1 when it names none)."""
    if isinstance(data, dict) and data.get("model_type") == EfficientNetV2Config.model_type:
        return EfficientNetV2Config
    return EfficientNetConfig


def read_config(path: str | Path) -> EfficientNetConfig:
    """The config a config.json describes, V1 or V2 by its ``model_type``.

    Raises:
        ConfigFileError: the file is missing or not readable JSON (also an ``OSError``).
        ConfigError: it holds a bad value.
    """
    data = read_json(path, "config file", "a readable JSON config")
    return config_class_for(data)._from_json_data(data)


def variant_config(name: str) -> EfficientNetConfig:
    """The config of a published variant of either family: ``b0`` … ``lite4`` or ``v2-b0`` … ``v2-xl``."""
    if is_v2_variant(name):
        return EfficientNetV2Config.from_variant(name)
    return EfficientNetConfig.from_variant(name)
