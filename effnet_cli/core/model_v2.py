"""The EfficientNetV2 forward path: V1's stem, depthwise, squeeze-excite and head, with Fused-MBConv blocks.

Three block types, one per stage (:attr:`EfficientNetV2Config.block_types`):

* ``conv``: a k×k conv, batch norm, activation (the first stage of the TF V2 bodies);
* ``fused``: Fused-MBConv, a k×k conv that expands, then a 1×1 projection;
* ``mbconv``: V1's MBConv (1×1 expand, k×k depthwise, squeeze-excite, 1×1 project).

Each adds its input back when shapes allow, through stochastic depth (whole samples
dropped in training, as timm's DropPath and torchvision's StochasticDepth do; V1 keeps
the transformers reference's element-wise dropout). The stem, the depthwise, squeeze-
excite and expansion layers, the head, the pooling, gradient checkpointing and the
output classes are V1's, imported from :mod:`effnet_cli.core.model`.

Keys: ``efficientnet.encoder.blocks.N.expansion.expand_conv`` (the k×k conv of ``conv``
and ``fused`` blocks, the 1×1 one of MBConv), ``...depthwise_conv.depthwise_conv``,
``...squeeze_excite.reduce``, ``...projection.project_conv``, as in V1.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from effnet_cli.core.config import EfficientNetConfig
from effnet_cli.core.config_v2 import EfficientNetV2Config
from effnet_cli.core.model import (
    EfficientNetDepthwiseLayer,
    EfficientNetEncoder,
    EfficientNetExpansionLayer,
    EfficientNetForImageClassification,
    EfficientNetModel,
    EfficientNetSqueezeExciteLayer,
    PaddedConv2d,
    _pad_for,
    activation,
)
from effnet_cli.core.scaling import BlockSpec


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random ``p`` share of the samples, rescale the rest."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # N×1×1×1
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FusedExpansionLayer(EfficientNetExpansionLayer):
    """V1's expansion (conv, norm, activation) with the k×k, stride-s conv of Fused-MBConv in place of the 1×1 one."""

    def __init__(self, config: EfficientNetV2Config, block: BlockSpec, out_dim: int) -> None:
        super().__init__(config, block.in_channels, out_dim)
        k, s = block.kernel_size, block.stride
        self.expand_conv = PaddedConv2d(block.in_channels, out_dim, k, stride=s, pad=_pad_for(config, k, s))
        self.expand_bn.momentum = config.batch_norm_momentum  # V1's expansion keeps torch's default here


class ProjectionLayer(nn.Module):
    """1×1 projection to the block's output width and its batch norm (no activation: a linear bottleneck)."""

    def __init__(self, config: EfficientNetV2Config, block: BlockSpec) -> None:
        super().__init__()
        self.project_conv = nn.Conv2d(block.expanded_channels, block.out_channels, kernel_size=1, bias=False)
        self.project_bn = nn.BatchNorm2d(block.out_channels, eps=config.batch_norm_eps,
                                         momentum=config.batch_norm_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_bn(self.project_conv(x))


class EfficientNetV2Block(nn.Module):
    """One ``conv``, ``fused`` or ``mbconv`` block; the residual (through stochastic depth) when shapes allow."""

    def __init__(self, config: EfficientNetV2Config, block: BlockSpec) -> None:
        super().__init__()
        self.spec = block
        if block.block_type == "conv":
            self.expansion = FusedExpansionLayer(config, block, block.out_channels)
        elif block.block_type == "fused":
            self.expansion = FusedExpansionLayer(config, block, block.expanded_channels)
        else:
            if block.expand_ratio != 1:
                self.expansion = EfficientNetExpansionLayer(config, block.in_channels, block.expanded_channels)
            self.depthwise_conv = EfficientNetDepthwiseLayer(config, block)
            if config.use_squeeze_excite:
                self.squeeze_excite = EfficientNetSqueezeExciteLayer(config, block)
        if block.block_type != "conv":
            self.projection = ProjectionLayer(config, block)
        self.drop_path = DropPath(block.drop_rate) if block.residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N×C_in×H×W -> N×C_out×H/s×W/s
        h = self.expansion(x) if hasattr(self, "expansion") else x
        if hasattr(self, "depthwise_conv"):
            h = self.depthwise_conv(h)
        if hasattr(self, "squeeze_excite"):
            h = self.squeeze_excite(h)
        if hasattr(self, "projection"):
            h = self.projection(h)
        return x + self.drop_path(h) if self.drop_path is not None else h


class EfficientNetV2Encoder(EfficientNetEncoder):
    """V1's encoder (blocks, head conv, gradient checkpointing) over EfficientNetV2 blocks."""

    @staticmethod
    def make_block(config: EfficientNetV2Config, spec: BlockSpec) -> nn.Module:
        """The module of one V2 block row."""
        return EfficientNetV2Block(config, spec)


def _init_v2_weights(module: nn.Module) -> None:
    """timm's and torchvision's V2 init: He-normal convs (fan out), unit batch norm, uniform classifier."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
        module.reset_running_stats()
    elif isinstance(module, nn.Linear):
        bound = 1.0 / math.sqrt(module.out_features)
        nn.init.uniform_(module.weight, -bound, bound)
        nn.init.zeros_(module.bias)


class EfficientNetV2Model(EfficientNetModel):
    """EfficientNetV2 without a classifier: feature maps and pooled features (V1's outputs)."""

    config_class = EfficientNetV2Config
    encoder_class: ClassVar[type[EfficientNetEncoder]] = EfficientNetV2Encoder

    def _init_weights(self, module: nn.Module) -> None:
        _init_v2_weights(module)


class EfficientNetV2ForImageClassification(EfficientNetForImageClassification):
    """EfficientNetV2 with dropout and a linear classifier on the pooled features (V1's outputs and loss)."""

    config_class = EfficientNetV2Config
    base_model_class: ClassVar[type[EfficientNetModel]] = EfficientNetV2Model

    def _init_weights(self, module: nn.Module) -> None:
        _init_v2_weights(module)


def model_class_for(config: EfficientNetConfig, wanted: type[nn.Module] | None = None) -> type[nn.Module]:
    """The class that builds ``config``: ``wanted`` (default: the classifier), or its V2 twin for a V2 config.

    Lets code that asks for ``EfficientNetModel`` or ``EfficientNetForImageClassification``
    load an EfficientNetV2 directory unchanged.
    """
    wanted = wanted or EfficientNetForImageClassification
    if not isinstance(config, EfficientNetV2Config) or issubclass(wanted, (EfficientNetV2Model,
                                                                            EfficientNetV2ForImageClassification)):
        return wanted
    if issubclass(wanted, EfficientNetForImageClassification):
        return EfficientNetV2ForImageClassification
    if issubclass(wanted, EfficientNetModel):
        return EfficientNetV2Model
    return wanted
