"""Keras applications' EfficientNetB0…B7 and EfficientNetV2B0…B3/S/M/L (``keras.applications.EfficientNetV2S``), from ``.h5`` files.

Reads Keras 3 ``.weights.h5`` (and ``.keras`` archives, which hold one), and the
legacy Keras 2 / tf.keras ``.h5`` layouts (weights only, or a full model with a
``model_weights`` group), through h5py — the optional extra ``effnet-cli[keras]``.
Keras itself is needed only for ``--verify``.

Numerics: TF-'same' padding (Keras pads stride-2 convs with ``correct_pad`` for the
input size and uses ``padding="same"`` elsewhere: the same numbers), batch-norm eps
1e-3, conv kernels stored HWIO, depthwise kernels (H, W, C, 1), dense kernels (in, out).

Keras models take raw 0-255 pixels and preprocess inside the graph:
``Rescaling(1/255)`` then ``Normalization(mean, variance)``, which divides by
``sqrt(variance)``; models built with ``weights="imagenet"`` add a third layer,
``Rescaling(1/sqrt(IMAGENET_STD))``, because Keras's ImageNet files store the std
where the variance belongs. We fold all of this into preprocessor_config.json:
``rescale_factor = 1/255``, ``image_mean = mean`` and
``image_std = sqrt(variance)`` (times ``sqrt(IMAGENET_STD)`` with the third layer),
so our processor reproduces Keras's input pipeline. The resize is the TF
reference's eval crop: the shorter side to size + 32 (bicubic), then a center crop.

EfficientNetV2 builds its preprocessing from constants, not from stored weights:
``Rescaling(1/255)`` and ``Normalization`` with ImageNet's mean and variance for
B0-B3, ``Rescaling(1/128, offset=-1)`` for S, M and L. Its depthwise convs are named
``dwconv2``, and its first stage (a Fused-MBConv without expansion) ``project_conv``.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from effnet_cli.core.config import VARIANTS, BlockSpec, EfficientNetConfig
from effnet_cli.core.config_v2 import EfficientNetV2Config
from effnet_cli.convert.common import (
    B_VARIANTS,
    IMAGENET_STD,
    KERAS_STYLE,
    Checkpoint,
    Plan,
    Rename,
    build_table,
    choose_variant,
    labels_note,
    preprocessor_config,
    v2_config,
    variant_config,
)
from effnet_cli.weights.variants_v2 import V2_VARIANTS
from effnet_cli.errors import ConfigError, WeightsError

NAME = "keras"
PACKAGE = "keras"
INSTALL_HINT = "pip install 'effnet-cli[keras]'"

STEM_HEAD = {"stem_conv": "stem_conv", "stem_bn": "stem_bn", "head_conv": "top_conv", "head_bn": "top_bn",
             "classifier": "predictions"}
BLOCK = {"expand_conv": "expand_conv", "expand_bn": "expand_bn", "dw_conv": "dwconv", "dw_bn": "bn",
         "se_reduce": "se_reduce", "se_expand": "se_expand", "project_conv": "project_conv",
         "project_bn": "project_bn"}
BLOCK_V2 = {**BLOCK, "dw_conv": "dwconv2"}
BLOCK_V2_CONV = {"expand_conv": "project_conv", "expand_bn": "project_bn"}  # k×k conv, norm, activation
V2_NAMES = ("v2-b0", "v2-b1", "v2-b2", "v2-b3", "v2-s", "v2-m", "v2-l")  # Keras has no V2-XL
# Keras 3 files store a layer's variables by position; these are their names, per layer class.
# (Keras 3 calls the depthwise kernel "kernel"; tf.keras called it "depthwise_kernel", read as "kernel".)
VARIABLE_NAMES = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
    "normalization": ("mean", "variance", "count"),
}
CROP_PADDING = 32  # the TF reference's eval crop: size / (size + 32) of the shorter side
KERAS_EPSILON = 1e-7  # Normalization divides by max(sqrt(variance), keras.backend.epsilon())


def matches(keys: Collection[str]) -> bool:
    """Whether a (flattened) weight dict has Keras applications' EfficientNet layer names."""
    return "stem_conv/kernel" in keys and "top_conv/kernel" in keys


def parse_arch(arch: str) -> str:
    """``EfficientNetB3`` / ``efficientnetb3`` / ``b3`` -> ``b3``; ``EfficientNetV2S`` / ``v2s`` -> ``v2-s``."""
    match = re.fullmatch(r"(?:efficientnet)?(b[0-7]|v2(?:b[0-3]|[sml]))",
                         arch.strip().lower().replace("_", "").replace("-", ""))
    if not match:
        raise ConfigError(f"Keras arch must be EfficientNetB0 … EfficientNetB7 or EfficientNetV2B0 … B3, S, M, L, "
                          f"got {arch!r}.")
    name = match.group(1)
    return f"v2-{name[2:]}" if name.startswith("v2") else name


def keras_name(variant: str) -> str:
    """The Keras application of a variant: ``b3`` -> ``EfficientNetB3``, ``v2-s`` -> ``EfficientNetV2S``."""
    return "EfficientNet" + variant.replace("-", "").upper()


# ----------------------------------------------------------------------- reading
def read(path: Path) -> Checkpoint:
    """Read a Keras ``.h5`` / ``.weights.h5`` / ``.keras`` file into ``{"layer/variable": tensor}``."""
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"Reading Keras .h5 files needs h5py: {INSTALL_HINT}.") from None
    try:
        if zipfile.is_zipfile(path):  # a .keras archive: config + model.weights.h5
            with zipfile.ZipFile(path) as archive:
                handle: Any = io.BytesIO(archive.read("model.weights.h5"))
        else:
            handle = str(path)
        with h5py.File(handle, "r") as f:
            if "layers" in f:
                tensors, layers = _read_keras3(f)
                layout = "keras3"
            else:
                group = f["model_weights"] if "model_weights" in f else f
                tensors, layers = _read_legacy(group)
                layout = "legacy"
    except KeyError as exc:
        raise WeightsError(f"{path} is not a Keras weights file this reader knows ({exc}).") from None
    except OSError as exc:
        raise WeightsError(f"{path} is not a readable HDF5 file ({exc}).") from None
    if not tensors:
        raise WeightsError(f"{path} holds no Keras weights.")
    return Checkpoint(Path(path), tensors, {"keras_layers": layers, "keras_format": layout})


def _tensor(dataset: Any) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(dataset[()], dtype=np.float32, ndmin=0))  # copies, float32, scalars too


def _read_keras3(f: Any) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    tensors: dict[str, torch.Tensor] = {}
    layers: list[tuple[str, str]] = []  # (layer name, layer class), weightless layers included

    def visit(group: Any) -> None:
        for key, layer in group["layers"].items():
            kind = re.sub(r"_\d+$", "", key)  # group keys are the class name, numbered
            variables = layer.get("vars")
            name = str(variables.attrs.get("name", key)) if variables is not None else key
            layers.append((name, kind))
            if variables is not None:
                names = VARIABLE_NAMES.get(kind, ())
                for index in sorted(variables, key=int):
                    var = names[int(index)] if int(index) < len(names) else index
                    tensors[f"{name}/{var}"] = _tensor(variables[index])
            if "layers" in layer:  # a nested model
                visit(layer)

    visit(f)
    return tensors, layers


def _read_legacy(group: Any) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    tensors: dict[str, torch.Tensor] = {}
    layers: list[tuple[str, str]] = []
    for raw_name in group.attrs["layer_names"]:
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        layer = group[name]
        weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in layer.attrs.get("weight_names", [])]
        kind = re.sub(r"_\d+$", "", name) if not weight_names else ""
        layers.append((name, kind))
        for weight in weight_names:
            var = weight.split("/")[-1].split(":")[0]  # "stem_bn/gamma:0" -> "gamma"
            var = "kernel" if var == "depthwise_kernel" else var  # tf.keras's name for it
            tensors[f"{name}/{var}"] = _tensor(layer[weight])
    return tensors, layers


# -------------------------------------------------------------- preprocessing
def _normalization_layer(ckpt: Checkpoint) -> str | None:
    for name, kind in ckpt.meta.get("keras_layers", []):
        if (kind == "normalization" or re.fullmatch(r"normalization(_\d+)?", name)) \
                and f"{name}/mean" in ckpt.tensors:
            return name
    return None


def _imagenet_std_fix(ckpt: Checkpoint, variance: torch.Tensor | None) -> bool:
    """Whether the model divides once more by sqrt(IMAGENET_STD) (Keras's weights="imagenet" path)."""
    layers = ckpt.meta.get("keras_layers", [])
    if ckpt.meta.get("keras_format") == "keras3":
        # The fix is a second Rescaling layer after the Normalization one.
        return sum(1 for _, kind in layers if kind == "rescaling") >= 2
    # Legacy files are Keras's published ImageNet weights when the variance holds the std.
    return variance is not None and torch.allclose(variance, torch.tensor(IMAGENET_STD), atol=1e-6)


def v2_preprocessing(variant: str) -> dict[str, Any]:
    """EfficientNetV2's in-graph constants as a preprocessor config (nothing of it is in the file)."""
    size = V2_VARIANTS[variant].image_size
    if variant.startswith("v2-b"):  # Rescaling(1/255), Normalization(ImageNet mean, std²)
        return preprocessor_config(crop=size, resize=size + CROP_PADDING, resample="bicubic", rescale_factor=1 / 255)
    # Rescaling(1/128, offset=-1): [-1, 1) with no normalisation.
    return {**preprocessor_config(crop=size, resize=size + CROP_PADDING, resample="bicubic", rescale_factor=1 / 128),
            "rescale_offset": True, "do_normalize": False}


def preprocessing(ckpt: Checkpoint, variant: str) -> tuple[dict[str, Any], frozenset[str], list[str]]:
    """Keras's in-graph input pipeline folded into a preprocessor config, plus the source keys it used."""
    if variant in V2_VARIANTS:
        return v2_preprocessing(variant), frozenset(), []
    size = VARIANTS[variant].image_size
    norm = _normalization_layer(ckpt)
    notes: list[str] = []
    if norm is None:
        mean = torch.zeros(3)
        variance = None
        std = torch.ones(3)
        consumed: frozenset[str] = frozenset()
        notes.append("No Normalization layer in the file: inputs are only rescaled to [0, 1], as such a Keras model does.")
    else:
        mean = ckpt.tensors[f"{norm}/mean"].flatten()
        variance = ckpt.tensors[f"{norm}/variance"].flatten()
        std = variance.clamp_min(0).sqrt().clamp_min(KERAS_EPSILON)
        consumed = frozenset(k for k in ckpt.tensors if k.startswith(f"{norm}/"))
    if _imagenet_std_fix(ckpt, variance):
        std = std * torch.tensor(IMAGENET_STD).sqrt()
        notes.append("Folded Keras's extra Rescaling(1/sqrt(std)) of weights='imagenet' into image_std.")
    elif variance is not None and torch.allclose(variance, torch.tensor(IMAGENET_STD), atol=1e-6):
        notes.append("The Normalization variance holds ImageNet's std but the model has no std fix layer; "
                     "the preprocessing reproduces the saved model as it is.")
    config = preprocessor_config(crop=size, resize=size + CROP_PADDING, resample="bicubic",
                                 mean=mean.tolist(), std=std.tolist(), rescale_factor=1 / 255)
    return config, consumed, notes


# ---------------------------------------------------------------------- plans
def _block_parts(block: BlockSpec, j: int) -> dict[str, str]:
    prefix = f"block{block.stage + 1}{chr(ord('a') + j)}_"
    return {part: prefix + name for part, name in BLOCK.items()}


def _block_parts_v2(block: BlockSpec, j: int) -> dict[str, str]:
    prefix = f"block{block.stage + 1}{chr(ord('a') + j)}_"
    return {part: prefix + name for part, name in (BLOCK_V2_CONV if block.block_type == "conv" else BLOCK_V2).items()}


def table(config: EfficientNetConfig) -> list[Rename]:
    """The rename table (our key <- Keras "layer/variable") for ``config``, with the layout permutes."""
    parts = _block_parts_v2 if isinstance(config, EfficientNetV2Config) else _block_parts
    return build_table(config, stem_head=STEM_HEAD, block_parts=parts, style=KERAS_STYLE)


def _plan_for(ckpt: Checkpoint, variant: str, num_labels: int) -> Plan:
    if variant in V2_VARIANTS:
        v2 = V2_VARIANTS[variant]
        # Keras rounds V2 channels to the nearest multiple of 8 in every variant (B0-B3 are the only scaled ones).
        config: EfficientNetConfig = v2_config(v2.body, width=v2.width_coefficient, depth=v2.depth_coefficient,
                                               num_labels=num_labels, image_size=v2.image_size, padding_mode="same",
                                               batch_norm_eps=1e-3, round_limit=0.0)
    else:
        config = variant_config(variant, num_labels=num_labels, padding_mode="same", batch_norm_eps=1e-3)
    prep, consumed, notes = preprocessing(ckpt, variant)
    notes = [n for n in (labels_note(num_labels),) if n] + notes
    return Plan(NAME, keras_name(variant), config, table(config), prep, consumed=consumed, notes=notes)


def plan(ckpt: Checkpoint, arch: str | None) -> Plan:
    """Decide variant, config and preprocessing for a Keras checkpoint."""
    bias = ckpt.tensors.get("predictions/bias")
    num_labels = int(bias.shape[0]) if bias is not None else 0
    if arch:
        return _plan_for(ckpt, parse_arch(arch), num_labels)
    candidates = V2_NAMES if any("_dwconv2/" in k for k in ckpt.tensors) else B_VARIANTS
    return choose_variant(ckpt.tensors, candidates, lambda v: _plan_for(ckpt, v, num_labels), source=NAME)


# ---------------------------------------------------------------------- verify
def reference_output(ckpt: Checkpoint, plan: Plan, raw: torch.Tensor, pixel_values: torch.Tensor
                     ) -> tuple[torch.Tensor, str]:
    """Run Keras's own EfficientNet, with the file's weights, on the raw 0-255 pixels.

    Keras runs on the torch backend unless a backend was chosen already, so no
    TensorFlow is needed. The weights are set layer by layer from the file; the
    ``weights="imagenet"`` std fix (a Rescaling after Normalization) is the same
    as a Normalization variance multiplied by IMAGENET_STD, which is how it is applied here.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import numpy as np

    variant = parse_arch(plan.arch)
    height, width = raw.shape[-2:]
    n = plan.config.num_labels
    build = getattr(keras.applications, keras_name(variant))
    model = build(weights=None, input_shape=(int(height), int(width), 3), include_top=bool(n), classes=n or 1000,
                  pooling=None if n else "avg", classifier_activation=None)
    norm = _normalization_layer(ckpt)
    variance = ckpt.tensors.get(f"{norm}/variance") if norm else None
    fix = _imagenet_std_fix(ckpt, variance)
    for layer in model.layers:
        if not layer.weights:
            continue
        if isinstance(layer, keras.layers.Normalization):
            if norm is None:
                continue
            values = {"mean": ckpt.tensors[f"{norm}/mean"],
                      "variance": ckpt.tensors[f"{norm}/variance"] * (torch.tensor(IMAGENET_STD) if fix else 1.0)}
            for var in layer.weights:
                if var.name in values:
                    var.assign(values[var.name].reshape(tuple(var.shape)).numpy())
            continue
        kind = type(layer).__name__
        names = {"Conv2D": VARIABLE_NAMES["conv2d"], "DepthwiseConv2D": VARIABLE_NAMES["depthwise_conv2d"],
                 "BatchNormalization": VARIABLE_NAMES["batch_normalization"], "Dense": VARIABLE_NAMES["dense"]}[kind]
        for var, var_name in zip(layer.weights, names):
            var.assign(ckpt.tensors[f"{layer.name}/{var_name}"].numpy())
    inputs = raw.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)  # NCHW -> NHWC
    out = keras.ops.convert_to_numpy(model(inputs, training=False))
    backend = keras.backend.backend()
    return torch.from_numpy(np.asarray(out, dtype=np.float32)), f"keras {keras.__version__} ({backend}) {keras_name(variant)}"


__all__ = ["matches", "parse_arch", "plan", "read", "reference_output", "table"]
