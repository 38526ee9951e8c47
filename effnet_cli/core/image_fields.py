"""The image processor's settings: field defaults, validation and the size arithmetic.

Everything ``preprocessor_config.json`` holds, checked the way transformers'
``EfficientNetImageProcessor`` accepts it: which keys a size may have, the PIL resampling
codes, the per-channel means and stds. Each parser returns the canonical value or raises
:class:`~effnet_cli.errors.ConfigError` naming the field.

This module never imports torch or torchvision (not even inside a function), so that
preprocessing without torch (numpy + Pillow) can read the same settings. Values that
only exist once those are loaded (a ``torch.Tensor`` of means, a torchvision
``InterpolationMode``) are recognised through ``sys.modules``: if torch is not loaded,
no value can be a tensor.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, Callable, Literal

import numpy as np

from effnet_cli.errors import ConfigError
from effnet_cli.weights.files import PROCESSOR_NAME

__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "IMAGE_PROCESSOR_TYPE",
    "PARSERS",
    "PREPROCESSOR_CONFIG_NAME",
    "RESAMPLE_NAMES",
    "Backend",
    "is_int",
    "parse_bool",
    "draft_size",
    "resize_target",
]

# File name transformers looks for beside config.json (defined with the other checkpoint files).
PREPROCESSOR_CONFIG_NAME = PROCESSOR_NAME

# Written into every file so that transformers' AutoImageProcessor picks its EfficientNet class.
IMAGE_PROCESSOR_TYPE = "EfficientNetImageProcessor"

Backend = Literal["torchvision", "pil"]
BACKENDS: tuple[str, ...] = ("torchvision", "pil")

# PIL resampling filters, as stored in preprocessor_config.json ("resample": 0 ... 5).
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
RESAMPLE_NAMES = {
    NEAREST: "nearest",
    LANCZOS: "lanczos",
    BILINEAR: "bilinear",
    BICUBIC: "bicubic",
    BOX: "box",
    HAMMING: "hamming",
}

# torchvision's InterpolationMode members, by their string values, mapped back to PIL codes
# (NEAREST_EXACT is what the torchvision reference makes of PIL's NEAREST).
_FROM_TORCHVISION_MODE = {
    "nearest": NEAREST,
    "nearest-exact": NEAREST,
    "bilinear": BILINEAR,
    "bicubic": BICUBIC,
    "lanczos": LANCZOS,
    "box": BOX,
    "hamming": HAMMING,
}

# The installed reference class's defaults (transformers 5.x, EfficientNetImageProcessor).
DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 346, "width": 346},
    "resample": BICUBIC,
    "do_center_crop": False,
    "crop_size": {"height": 289, "width": 289},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "rescale_offset": False,
    "do_normalize": True,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
    "include_top": True,
    "do_convert_rgb": None,
}

# The size dictionaries the reference can resize to. It also accepts {"longest_edge"} and
# {"min_pixels", "max_pixels"} as keys, then fails when resizing; we refuse them up front.
SIZE_KEY_SETS = (
    frozenset({"height", "width"}),
    frozenset({"shortest_edge"}),
    frozenset({"shortest_edge", "longest_edge"}),
    frozenset({"max_height", "max_width"}),
)


# --------------------------------------------------------------------------------------
# Validation of single fields. Each returns the canonical value or raises ConfigError.
# --------------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for booleans (which are ints to Python)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def parse_bool(name: str, value: Any) -> bool:
    """A Python or numpy boolean; anything else (1, "true") is refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be true or false, got {value!r}.")


def _parse_optional_bool(name: str, value: Any) -> bool | None:
    return None if value is None else parse_bool(name, value)


def _parse_size(name: str, value: Any, default_to_square: bool = True) -> dict[str, int]:
    if is_int(value):
        size = {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        size = {"height": value[0], "width": value[1]}
    elif isinstance(value, Mapping):
        # transformers' SizeDict leaves unset keys as None; so may a hand-written JSON file.
        size = {str(key): val for key, val in value.items() if val is not None}
    else:
        raise ConfigError(
            f"{name} must be an integer, a (height, width) pair or a dict such as "
            f'{{"height": 224, "width": 224}}, got {value!r}.'
        )
    allowed = SIZE_KEY_SETS[:1] if name == "crop_size" else SIZE_KEY_SETS
    if frozenset(size) not in allowed:
        choices = " or ".join("{" + ", ".join(sorted(keys)) + "}" for keys in allowed)
        raise ConfigError(f"{name} must have the keys {choices}, got {sorted(size)}.")
    if not all(is_int(val) and val > 0 for val in size.values()):
        raise ConfigError(f"{name} must hold positive integers, got {value!r}.")
    return {key: int(val) for key, val in size.items()}


def _loaded_type(module: str, name: str) -> type | None:
    """A class from a module that is already imported, or None; never imports anything."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _parse_resample(name: str, value: Any) -> int:
    # PIL.Image.Resampling members are ints, so they pass; a torchvision mode is mapped back.
    # A value can only be an InterpolationMode once torchvision (which defines it there) is loaded.
    mode_type = _loaded_type("torchvision.transforms.functional", "InterpolationMode")
    if mode_type is not None and isinstance(value, mode_type):
        value = _FROM_TORCHVISION_MODE.get(value.value, value)
    if is_int(value) and int(value) in RESAMPLE_NAMES:
        return int(value)
    choices = ", ".join(f"{code} ({label})" for code, label in RESAMPLE_NAMES.items())
    raise ConfigError(f"{name} must be a PIL resampling filter: {choices}; got {value!r}.")


def _parse_rescale_factor(name: str, value: Any) -> float:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        factor = float(value)
        if math.isfinite(factor) and factor > 0:
            return factor
    raise ConfigError(f"{name} must be a positive number such as 1/255, got {value!r}.")


def _parse_channels(name: str, value: Any) -> tuple[float, float, float]:
    # A single number means the same value for the three channels, as in the reference.
    values = [value] * 3 if isinstance(value, (int, float, np.number)) else value
    tensor_type = _loaded_type("torch", "Tensor")  # only a loaded torch can have made a tensor
    if isinstance(values, np.ndarray) or (tensor_type is not None and isinstance(values, tensor_type)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise ConfigError(f"{name} must have one value per RGB channel (3 numbers), got {value!r}.")
    if not all(
        isinstance(val, (int, float, np.number)) and not isinstance(val, (bool, np.bool_))
        and math.isfinite(float(val))
        for val in values
    ):
        raise ConfigError(f"{name} must hold finite numbers, got {value!r}.")
    channels = (float(values[0]), float(values[1]), float(values[2]))
    if name == "image_std" and any(val == 0 for val in channels):
        raise ConfigError(f"image_std must not contain zero (it divides the pixels), got {value!r}.")
    return channels


def _parse_backend(name: str, value: Any) -> str:
    if value in BACKENDS:
        return str(value)
    raise ConfigError(f"{name} must be one of {', '.join(map(repr, BACKENDS))}, got {value!r}.")


# field name -> parser(name, value); the processor validates every assignment through this table.
PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "do_resize": parse_bool,
    "size": _parse_size,
    "resample": _parse_resample,
    "do_center_crop": parse_bool,
    "crop_size": _parse_size,
    "do_rescale": parse_bool,
    "rescale_factor": _parse_rescale_factor,
    "rescale_offset": parse_bool,
    "do_normalize": parse_bool,
    "image_mean": _parse_channels,
    "image_std": _parse_channels,
    "include_top": parse_bool,
    "backend": _parse_backend,
    "do_convert_rgb": _parse_optional_bool,
}


# --------------------------------------------------------------------------------------
# Size arithmetic
# --------------------------------------------------------------------------------------


def resize_target(size: Mapping[str, int], height: int, width: int) -> tuple[int, int]:
    """(height, width) an image of this size is resized to under ``size``, with the reference's integer rounding.

    ``size`` is a validated size dict (one of :data:`SIZE_KEY_SETS`).
    """
    if "height" in size:
        return size["height"], size["width"]
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    shortest = size["shortest_edge"]
    longest = size.get("longest_edge")
    if longest is None:
        short, long = min(height, width), max(height, width)
        new_long = int(shortest * long / short)
        return (new_long, shortest) if width <= height else (shortest, new_long)
    # Shortest edge, unless that makes the longest edge exceed `longest_edge`.
    raw = None
    if max(height, width) / min(height, width) * shortest > longest:
        raw = longest * min(height, width) / max(height, width)
        shortest = int(round(raw))
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    if width < height:
        return int((raw if raw is not None else shortest) * height / width), shortest
    return shortest, int((raw if raw is not None else shortest) * width / height)


def draft_size(size: Mapping[str, int], do_resize: bool, orig_w: int, orig_h: int) -> tuple[int, int] | None:
    """The (width, height) to pass to ``PIL.Image.draft`` for a JPEG of ``orig_w × orig_h``, or None.

    The resize target itself, so the decoder never goes below what the resize needs; None when
    resizing is off or the image is less than twice the target on one side (no reduction possible).
    """
    if not do_resize or orig_w <= 0 or orig_h <= 0:
        return None
    height, width = resize_target(size, orig_h, orig_w)
    if width <= 0 or height <= 0 or min(orig_w // width, orig_h // height) < 2:
        return None
    return width, height
