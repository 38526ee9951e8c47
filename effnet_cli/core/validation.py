"""The values a config may hold, and the check that names the first one that cannot build a model."""

from __future__ import annotations

import math
from typing import Any

from effnet_cli.core.scaling import STAGE_LISTS
from effnet_cli.errors import ConfigError

# Activation names accepted in ``hidden_act`` (the reference's ACT2FN subset that
# makes sense for a convnet). The model maps each to a torch module.
ACTIVATIONS = ("swish", "silu", "relu", "relu6", "gelu", "gelu_new", "selu", "mish")
POOLING_TYPES = ("mean", "max")
# How convolutions pad. "fixed": the reference's scheme (stem pads right/bottom
# by one, stride-2 depthwise convs pad per ``depthwise_padding``): TF-'same' at the
# native size only. "same": TF-'same' computed from the actual input size, as
# Keras, timm's tf_* models and efficientnet_pytorch do. "symmetric": k//2 on
# every side, as torchvision and timm's own weights do.
PADDING_MODES = ("fixed", "same", "symmetric")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


def check_int(name: str, value: Any, *, minimum: int | None = None, what: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer (a whole float counts) of at least ``minimum``."""
    prefix = f"{what} {name}" if what else name
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{prefix.strip()} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{prefix.strip()} must be at least {minimum}, got {value}.")


def check_number(name: str, value: Any, *, positive: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a real number (and positive, when asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}.")


def check_stage_lists(config: Any) -> None:
    """The six per-stage lists of an ``EfficientNetConfig``: integers, one per stage, chained; stored as int lists."""
    lengths = {}
    for name in STAGE_LISTS:
        value = getattr(config, name)
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{name} must be a non-empty list of integers, got {value!r}.")
        for item in value:
            check_int(name, item, minimum=1, what="every entry of")
        setattr(config, name, [int(v) for v in value])
        lengths[name] = len(value)
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise ConfigError(f"The per-stage lists must all have one entry per stage; got lengths {detail}.")
    for k in config.kernel_sizes:
        if k % 2 == 0:
            raise ConfigError(f"kernel_sizes must be odd, got {k}.")
    for s in config.strides:
        if s not in (1, 2):
            raise ConfigError(f"strides must be 1 or 2, got {s}.")
    for i in range(1, len(config.in_channels)):
        if config.in_channels[i] != config.out_channels[i - 1]:
            raise ConfigError(
                f"in_channels[{i}]={config.in_channels[i]} must equal out_channels[{i - 1}]={config.out_channels[i - 1]}: "
                "each stage starts where the previous one ends."
            )
    if not isinstance(config.depthwise_padding, (list, tuple)):
        raise ConfigError(f"depthwise_padding must be a list of block indices, got {config.depthwise_padding!r}.")
    for item in config.depthwise_padding:
        check_int("depthwise_padding", item, minimum=0, what="every entry of")
    config.depthwise_padding = [int(v) for v in config.depthwise_padding]


def validate_config(config: Any) -> None:
    """Check an ``EfficientNetConfig`` field by field; fill ``hidden_dim`` when it is None.

    Raises :class:`ConfigError` naming the first field whose value cannot build a model.
    """
    check_int("num_channels", config.num_channels, minimum=1)
    check_int("image_size", config.image_size, minimum=1)
    check_number("width_coefficient", config.width_coefficient, positive=True)
    check_number("depth_coefficient", config.depth_coefficient, positive=True)
    check_int("depth_divisor", config.depth_divisor, minimum=1)
    check_stage_lists(config)
    check_number("squeeze_expansion_ratio", config.squeeze_expansion_ratio, positive=True)
    for name, value, allowed in (("hidden_act", config.hidden_act, ACTIVATIONS),
                                 ("pooling_type", config.pooling_type, POOLING_TYPES),
                                 ("padding_mode", config.padding_mode, PADDING_MODES)):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    check_number("initializer_range", config.initializer_range, positive=True)
    check_number("batch_norm_eps", config.batch_norm_eps, positive=True)
    check_number("batch_norm_momentum", config.batch_norm_momentum)
    for name in ("dropout_rate", "drop_connect_rate"):
        value = getattr(config, name)
        check_number(name, value)
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}.")
    check_int("num_labels", config.num_labels, minimum=0)
    if config.problem_type not in PROBLEM_TYPES:
        raise ConfigError(f"problem_type {config.problem_type!r} is not one of regression, single_label_classification, multi_label_classification.")
    derived = config.head_channels
    if config.hidden_dim is None:
        config.hidden_dim = derived
    else:
        check_int("hidden_dim", config.hidden_dim, minimum=1)
        if config.hidden_dim != derived:
            raise ConfigError(
                f"hidden_dim={config.hidden_dim} disagrees with width_coefficient={config.width_coefficient}, "
                f"which gives a head of {derived} channels; drop hidden_dim or set it to {derived}."
            )
