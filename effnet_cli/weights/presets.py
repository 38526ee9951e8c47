"""Preprocessing that travels with published weights, written once.

Each preset is a ``preprocessor_config.json`` dict in transformers'
``EfficientNetImageProcessor`` format, so it can be written beside the weights
and read back by the processor: ImageNet mean/std, the hub's google/efficientnet-b*
configs (nearest resize, the std given as square roots with ``include_top``
dividing twice), and TF-Lite's [-1, 1] inputs. Also the ImageNet-1k class names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from effnet_cli.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# google/efficientnet-b*'s preprocessor_config.json stores the square roots of ImageNet's
# std; include_top then divides by them twice, which gives ImageNet's std.
HUB_STD_SQRT = (0.47853944, 0.4732864, 0.47434163)
# TF-Lite's input normalisation (efficientnet/lite/efficientnet_lite_builder.py:
# MEAN_RGB = 127, STDDEV_RGB = 128), expressed on the 0-1 scale after rescaling.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# The TF reference evaluates on a center crop of size/(size+32) of the shorter side.
CROP_PADDING = 32
# PIL's resampling filter numbers, as preprocessor_config.json stores them.
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def preprocessor_config(
    *,
    crop: int,
    resize: int | None = None,
    resize_mode: str = "shortest_edge",
    resample: str = "bicubic",
    mean: Iterable[float] = IMAGENET_MEAN,
    std: Iterable[float] = IMAGENET_STD,
    rescale_factor: float = 1 / 255,
    rescale_offset: bool = False,
    include_top: bool = False,
) -> dict[str, Any]:
    """A ``preprocessor_config.json`` in transformers' EfficientNetImageProcessor format.

    ``resize_mode="shortest_edge"``: scale the shorter side to ``resize`` keeping the
    aspect ratio, then center-crop ``crop`` (torchvision's and timm's eval
    transform). ``"exact"``: resize to ``resize``×``resize`` (timm's "squash"), then crop.
    """
    if resample not in RESAMPLE:
        raise ConfigError(f"Unknown resampling filter {resample!r}; choose one of {', '.join(RESAMPLE)}.")
    resize = crop if resize is None else int(resize)
    if resize_mode == "shortest_edge":
        size: dict[str, int] = {"shortest_edge": resize}
    elif resize_mode == "exact":
        size = {"height": resize, "width": resize}
    else:
        raise ConfigError(f"resize_mode must be 'shortest_edge' or 'exact', got {resize_mode!r}.")
    return {
        "image_processor_type": "EfficientNetImageProcessor",
        "do_resize": True,
        "size": size,
        "resample": RESAMPLE[resample],
        "do_center_crop": True,
        "crop_size": {"height": int(crop), "width": int(crop)},
        "do_rescale": True,
        "rescale_factor": float(rescale_factor),
        "rescale_offset": bool(rescale_offset),
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
        "include_top": bool(include_top),
    }


def crop_pct_preprocessing(size: int, crop_pct: float, **kwargs: Any) -> dict[str, Any]:
    """timm's eval transform: resize to ``floor(size / crop_pct)`` then center-crop ``size``."""
    return preprocessor_config(crop=size, resize=math.floor(size / crop_pct), **kwargs)


def hub_preprocessing(image_size: int) -> dict[str, Any]:
    """google/efficientnet-b*'s preprocessor_config.json at ``image_size``.

    Nearest resize to the native size without a crop, ImageNet's mean, and the
    square roots of its std with ``include_top`` dividing by them twice. Used for
    checkpoints that ship without a preprocessor config.
    """
    return {
        "image_processor_type": "EfficientNetImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": RESAMPLE["nearest"],
        "do_center_crop": False,
        "crop_size": {"height": 289, "width": 289},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "rescale_offset": False,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(HUB_STD_SQRT),
        "include_top": True,
    }


def tf_lite_preprocessing(image_size: int) -> dict[str, Any]:
    """TF-Lite's inputs ([-1, 1]) after the TF reference's eval crop (shorter side to size + 32, bilinear)."""
    return preprocessor_config(crop=image_size, resize=image_size + CROP_PADDING, resample="bilinear",
                               mean=LITE_MEAN, std=LITE_STD)


@lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    from importlib import resources  # imported here: `effnet --help` never needs it

    text = resources.files("effnet_cli.resources").joinpath("imagenet1k_labels.json").read_text("utf-8")
    return tuple(json.loads(text))


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in the index order every checkpoint uses."""
    return list(_imagenet_labels())


def preset_json(preprocessing: dict[str, Any]) -> str:
    """A preset's ``preprocessor_config.json`` text, as converted directories hold it."""
    return json.dumps(preprocessing, indent=2, sort_keys=True) + "\n"
