"""The EfficientNet forward path, in one file.

Module names follow the Hugging Face reference's state-dict keys
(``embeddings.convolution``, ``encoder.blocks.3.depthwise_conv.depthwise_conv``,
``encoder.top_bn``, ``classifier``...), so a transformers checkpoint loads with
``strict=True`` and nothing renamed. The structure is built from the typed block
rows of :meth:`EfficientNetConfig.blocks`, not from the config's parallel lists.

Shapes in comments: N batch, C channels, H×W spatial size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from effnet_cli.core.checkpoint import save_pretrained
from effnet_cli.core.config import EfficientNetConfig
from effnet_cli.core.checkpointing import CheckpointSettings, checkpointed, checkpointing_settings
from effnet_cli.core.hub_mixin import IGNORED_LOADER_KWARGS, Located, PretrainedMixin
from effnet_cli.core.outputs import EfficientNetModelOutput, ImageClassifierOutput, ModelOutput  # noqa: F401 - re-exported
from effnet_cli.core.scaling import BlockSpec, tf_same_padding

_ACTIVATIONS = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "selu": nn.SELU,
    "mish": nn.Mish,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module for a ``hidden_act`` name."""
    return _ACTIVATIONS[name]()


# ------------------------------------------------------------------- padding
class PaddedConv2d(nn.Conv2d):
    """A Conv2d whose padding is explicit: symmetric, a fixed asymmetric tuple, or TF-'same' per input.

    ``pad`` is an int (symmetric, done by the conv itself: fastest), a
    (left, right, top, bottom) tuple applied with ``F.pad`` (static, exports
    cleanly), or ``"same"`` to compute TF's asymmetric padding from the input's
    actual size, so TF-trained weights give their numbers at any resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 groups: int = 1, bias: bool = False, pad: int | tuple[int, int, int, int] | str = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias,
                         padding=pad if isinstance(pad, int) else 0)
        self.pad = None if isinstance(pad, int) else pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad == "same":
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = tf_same_padding(x.shape[-2], k, s)
            left, right = tf_same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        elif self.pad is not None:
            x = F.pad(x, self.pad)
        return super().forward(x)


def _pad_for(config: EfficientNetConfig, kernel_size: int, stride: int, *, adjust: bool = True,
             stem: bool = False) -> int | tuple[int, int, int, int] | str:
    """The ``pad`` argument of a k×k conv under the config's padding mode."""
    half = kernel_size // 2
    if stride == 1 or config.padding_mode == "symmetric":
        return half  # odd kernel, stride 1: every mode pads symmetrically
    if config.padding_mode == "same":
        return "same"
    # "fixed": the reference's static TF-'same' for even inputs, symmetric where listed.
    if stem:
        return (0, 1, 0, 1)
    return (half - 1, half, half - 1, half) if adjust else half


# -------------------------------------------------------------------- layers
class EfficientNetEmbeddings(nn.Module):
    """The stem: a stride-2 3×3 conv, batch norm, activation."""

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__()
        out = config.stem_channels
        self.convolution = PaddedConv2d(config.num_channels, out, 3, stride=2, pad=_pad_for(config, 3, 2, stem=True))
        self.batchnorm = nn.BatchNorm2d(out, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.activation = activation(config.hidden_act)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # N×3×H×W -> N×C×H/2×W/2
        return self.activation(self.batchnorm(self.convolution(pixel_values)))


class EfficientNetExpansionLayer(nn.Module):
    """1×1 conv widening the block input by the expansion ratio."""

    def __init__(self, config: EfficientNetConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.expand_conv = nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False)
        # The reference leaves this one norm at torch's default momentum; kept for training parity.
        self.expand_bn = nn.BatchNorm2d(out_dim, eps=config.batch_norm_eps)
        self.expand_act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand_act(self.expand_bn(self.expand_conv(x)))


class EfficientNetDepthwiseLayer(nn.Module):
    """k×k depthwise conv (the only spatial conv of the block), batch norm, activation."""

    def __init__(self, config: EfficientNetConfig, block: BlockSpec) -> None:
        super().__init__()
        dim, k, s = block.expanded_channels, block.kernel_size, block.stride
        pad = _pad_for(config, k, s, adjust=block.adjust_padding)
        self.depthwise_conv = PaddedConv2d(dim, dim, k, stride=s, groups=dim, pad=pad)
        self.depthwise_norm = nn.BatchNorm2d(dim, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.depthwise_act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise_act(self.depthwise_norm(self.depthwise_conv(x)))


class EfficientNetSqueezeExciteLayer(nn.Module):
    """Channel attention: global mean -> bottleneck -> sigmoid gate on each channel."""

    def __init__(self, config: EfficientNetConfig, block: BlockSpec) -> None:
        super().__init__()
        dim = block.expanded_channels
        # The bottleneck is relative to the block *input*, not the expanded width.
        dim_se = max(1, int(block.in_channels * config.squeeze_expansion_ratio))
        self.reduce = nn.Conv2d(dim, dim_se, kernel_size=1)
        self.expand = nn.Conv2d(dim_se, dim, kernel_size=1)
        self.act_reduce = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)  # N×C×1×1
        gate = torch.sigmoid(self.expand(self.act_reduce(self.reduce(gate))))
        return x * gate


class EfficientNetFinalBlockLayer(nn.Module):
    """1×1 projection back to the block's output width, plus the residual when shapes allow."""

    def __init__(self, config: EfficientNetConfig, block: BlockSpec) -> None:
        super().__init__()
        self.residual = block.residual
        self.project_conv = nn.Conv2d(block.expanded_channels, block.out_channels, kernel_size=1, bias=False)
        self.project_bn = nn.BatchNorm2d(block.out_channels, eps=config.batch_norm_eps,
                                         momentum=config.batch_norm_momentum)
        # The reference drops whole activations (nn.Dropout), not whole samples; kept for parity.
        self.dropout = nn.Dropout(p=block.drop_rate)

    def forward(self, block_input: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.project_bn(self.project_conv(x))
        if self.residual:
            x = self.dropout(x) + block_input
        return x


class EfficientNetBlock(nn.Module):
    """MBConv: [expand 1×1] -> depthwise k×k -> [squeeze-excite] -> project 1×1 (+ residual)."""

    def __init__(self, config: EfficientNetConfig, block: BlockSpec) -> None:
        super().__init__()
        self.spec = block
        if block.expand_ratio != 1:
            self.expansion = EfficientNetExpansionLayer(config, block.in_channels, block.expanded_channels)
        self.depthwise_conv = EfficientNetDepthwiseLayer(config, block)
        if config.use_squeeze_excite:
            self.squeeze_excite = EfficientNetSqueezeExciteLayer(config, block)
        self.projection = EfficientNetFinalBlockLayer(config, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expansion(x) if self.spec.expand_ratio != 1 else x
        h = self.depthwise_conv(h)
        if hasattr(self, "squeeze_excite"):
            h = self.squeeze_excite(h)
        return self.projection(x, h)


class EfficientNetEncoder(nn.Module):
    """All MBConv blocks, then the 1×1 head conv to ``hidden_dim`` channels."""

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__()
        specs = config.blocks()
        self.blocks = nn.ModuleList(self.make_block(config, spec) for spec in specs)
        self.top_conv = nn.Conv2d(specs[-1].out_channels, config.head_channels, kernel_size=1, bias=False)
        self.top_bn = nn.BatchNorm2d(config.head_channels, eps=config.batch_norm_eps,
                                     momentum=config.batch_norm_momentum)
        self.top_activation = activation(config.hidden_act)

        self.gradient_checkpointing = False
        self.checkpointing = CheckpointSettings()  # set by the model's gradient_checkpointing_enable

    @staticmethod
    def make_block(config: EfficientNetConfig, spec: BlockSpec) -> nn.Module:
        """The module of one block row (EfficientNetV2's encoder builds its block types here)."""
        return EfficientNetBlock(config, spec)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        states = (x,) if output_hidden_states else None
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        every, options, offload = self.checkpointing.every, self.checkpointing.options, self.checkpointing.offload
        for index, block in enumerate(self.blocks):
            x = checkpointed(block, x, options, offload=offload) if checkpointing and index % every == 0 else block(x)
            if states is not None:
                states += (x,)
        x = self.top_activation(self.top_bn(self.top_conv(x)))  # N×hidden_dim×h×w
        return x, states


# -------------------------------------------------------------------- models
class EfficientNetPreTrainedModel(PretrainedMixin, nn.Module):
    """Shared init, config and save/load helpers of the two models."""

    base_model_prefix = "efficientnet"
    main_input_name = "pixel_values"
    config_class = EfficientNetConfig
    supports_gradient_checkpointing = True  # over the MBConv blocks; the reference has none for EfficientNet

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__()
        config.validate()  # the config may have been changed since it was built
        self.config = config

    def _init_weights(self, module: nn.Module) -> None:
        # The reference's init: N(0, initializer_range) weights (batch-norm scales included),
        # zero biases, fresh running stats.
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.BatchNorm2d)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()

    # ------------------------------------------------------ checkpointing
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, *,
                                      activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                      every_n_layers: int = 1, offload: bool = False) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training only).

        Same gradients as without it, for less memory. The checkpointing keywords (under
        either name: transformers 5's ``activation_checkpointing_kwargs``, which its
        ``Trainer`` passes, or the older ``gradient_checkpointing_kwargs``; not both) go to
        ``torch.utils.checkpoint.checkpoint`` (``use_reentrant`` defaults to False). As in
        transformers, ``every_n_layers=n`` checkpoints only every n-th MBConv block and
        ``offload=True`` keeps the saved block inputs in (pinned) host memory.
        """
        settings = checkpointing_settings(gradient_checkpointing_kwargs, activation_checkpointing_kwargs,
                                          every_n_layers, offload)
        for module in self.modules():
            if isinstance(module, EfficientNetEncoder):
                module.gradient_checkpointing = True
                module.checkpointing = settings

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """transformers 5's name (and signature) for :meth:`gradient_checkpointing_enable`; its Trainer calls this."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                           every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_disable(self) -> None:
        """Keep activations again (the default)."""
        for module in self.modules():
            if isinstance(module, EfficientNetEncoder):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether :meth:`gradient_checkpointing_enable` is in effect."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    activation_checkpointing_disable = gradient_checkpointing_disable  # transformers 5's name

    @property
    def is_activation_checkpointing(self) -> bool:
        """Alias of :attr:`is_gradient_checkpointing`."""
        return self.is_gradient_checkpointing

    def post_init(self) -> None:
        """Initialise every weight as the reference does."""
        self.apply(self._init_weights)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's parameters."""
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (buffers excluded), as the paper and the reference count them.

        transformers' keywords: ``only_trainable`` counts those with ``requires_grad``;
        ``exclude_embeddings`` leaves out token-embedding tables, of which a convnet has none
        (transformers' Trainer asks for it to estimate FLOPs).
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # ------------------------------------------------- from/save_pretrained
    pretrained_file: ClassVar[str | None] = None  # reads the whole directory (config, weights)
    loader_kwargs: ClassVar[frozenset[str]] = IGNORED_LOADER_KWARGS

    @classmethod
    def _from_located(cls, located: Located, **kwargs: Any
                      ) -> EfficientNetPreTrainedModel | tuple[EfficientNetPreTrainedModel, dict[str, Any]]:
        """:meth:`from_pretrained` with transformers' keywords; see :func:`effnet_cli.core.pretrained.from_pretrained`.

        ``num_labels=N`` (``id2label=``, ``label2id=``) with ``ignore_mismatched_sizes=True``
        swaps in a new head initialised as the reference does; ``output_loading_info=True``
        also returns ``{"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}``;
        ``dtype=``/``torch_dtype=``, ``device=``; ``from_pretrained(None, config=..., state_dict=...)``
        builds from weights in memory.
        """
        from effnet_cli.core.pretrained import from_pretrained

        return from_pretrained(cls, located, **kwargs)

    def _save_files(self, directory: Path) -> None:
        """:meth:`save_pretrained`: ``config.json`` and ``model.safetensors``, a directory effnet and transformers load.

        The weights are always one safetensors file.
        """
        save_pretrained(self, directory)


class EfficientNetModel(EfficientNetPreTrainedModel):
    """EfficientNet without a classifier: feature maps and pooled features."""

    encoder_class: ClassVar[type[EfficientNetEncoder]] = EfficientNetEncoder  # EfficientNetV2 swaps in its own

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__(config)
        self.embeddings = EfficientNetEmbeddings(config)
        self.encoder = self.encoder_class(config)
        self.post_init()

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Global pooling over H×W. A plain reduction, unlike the reference's AvgPool2d, so it exports to ONNX."""
        if self.config.pooling_type == "max":
            return feature_map.amax(dim=(2, 3))
        return feature_map.mean(dim=(2, 3))

    def stage_output(self, pixel_values: torch.Tensor, stage: int) -> torch.Tensor:
        """The feature map at the end of stage ``stage`` (0-based), running only the blocks it needs."""
        num_stages = len(self.config.in_channels)
        if not 0 <= stage < num_stages:
            raise ValueError(f"stage must be in 0..{num_stages - 1}, got {stage}.")
        x = self.embeddings(pixel_values)
        for block in self.encoder.blocks:
            if block.spec.stage > stage:
                break
            x = block(x)
        return x

    def forward(self, pixel_values: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> EfficientNetModelOutput | tuple:
        # As the reference: an argument left at None falls back to the config.
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        x = self.embeddings(pixel_values)
        x, states = self.encoder(x, output_hidden_states=bool(output_hidden_states))
        out = EfficientNetModelOutput(last_hidden_state=x, pooler_output=self.pool(x), hidden_states=states)
        return out if return_dict else out.to_tuple()


class EfficientNetForImageClassification(EfficientNetPreTrainedModel):
    """EfficientNet with dropout and a linear classifier on the pooled features."""

    base_model_class: ClassVar[type[EfficientNetModel]] = EfficientNetModel  # EfficientNetV2 swaps in its own

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.efficientnet = self.base_model_class(config)
        self.dropout = nn.Dropout(p=config.dropout_rate)
        self.classifier = nn.Linear(config.head_channels, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> ImageClassifierOutput | tuple:
        if return_dict is None:
            return_dict = self.config.return_dict
        base = self.efficientnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(base.pooler_output))  # N×num_labels
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states)
        return out if return_dict else out.to_tuple()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: EfficientNetConfig) -> torch.Tensor:
    """The reference's loss choice: MSE for one output, cross-entropy for class indices, BCE for multi-hot."""
    num_labels = config.num_labels
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    labels = labels.to(logits.device)
    if problem == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
