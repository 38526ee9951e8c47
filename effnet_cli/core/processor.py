"""EfficientNet image preprocessing, numerically identical to Hugging Face transformers.

:class:`EfficientNetImageProcessor` reads and writes the same ``preprocessor_config.json``
as transformers' ``EfficientNetImageProcessor`` and produces the same ``pixel_values``,
without importing transformers (only torch, torchvision, numpy and PIL).

The steps, in the reference's order::

    image -> RGB -> resize -> center crop (zero padded) -> * rescale_factor [- 1]
          -> (x - mean) / std -> [/ std again when include_top]

transformers 5 ships two implementations of these steps, and they do not give the
same numbers: ``EfficientNetImageProcessor`` (torchvision kernels, what
``AutoImageProcessor`` and ``pipeline`` load) and ``EfficientNetImageProcessorPil``
(PIL/numpy, the semantics of the transformers 4 processor). ``backend`` picks which one
is reproduced exactly; the default is ``"torchvision"``. The differences between the two
(nearest-neighbour sampling, bilinear/bicubic rounding, where zero padding goes) are
measured in docs/preprocessing.md.

Everything after the resize is one multiply-add per pixel with per-channel constants,
and :meth:`EfficientNetImageProcessor.preprocess_pil` is the single-image path the
data-loading workers call; it runs the same code as ``__call__``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

from effnet_cli.core.hub_mixin import Located, PretrainedMixin
from effnet_cli.errors import ConfigError, InputError

__all__ = [
    "PREPROCESSOR_CONFIG_NAME",
    "BatchFeature",
    "EfficientNetImageProcessor",
]

# File name transformers looks for beside config.json.
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

# Written into every file so that transformers' AutoImageProcessor picks its EfficientNet class.
IMAGE_PROCESSOR_TYPE = "EfficientNetImageProcessor"

Backend = Literal["torchvision", "pil"]
BACKENDS: tuple[str, ...] = ("torchvision", "pil")

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

# PIL resampling filters, as stored in preprocessor_config.json ("resample": 0 ... 5).
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
_RESAMPLE_NAMES = {
    NEAREST: "nearest",
    LANCZOS: "lanczos",
    BILINEAR: "bilinear",
    BICUBIC: "bicubic",
    BOX: "box",
    HAMMING: "hamming",
}

# The torchvision reference maps PIL filters to these modes. NEAREST becomes NEAREST_EXACT
# (source index floor((i + 0.5) * in / out)), which is not what PIL's NEAREST samples.
# torch has no box or hamming kernel: for those the reference itself fails, and we resize with PIL.
_TORCHVISION_MODES = {
    NEAREST: InterpolationMode.NEAREST_EXACT,
    BILINEAR: InterpolationMode.BILINEAR,
    BICUBIC: InterpolationMode.BICUBIC,
    LANCZOS: InterpolationMode.LANCZOS,
}


def _torchvision_has_lanczos() -> bool:
    # Native lanczos arrived in torchvision 0.27; older versions make the reference fall
    # back to bicubic, which we do not copy: PIL's lanczos is the closer answer.
    major, minor = (int(part) for part in torchvision.__version__.split(".")[:2])
    return (major, minor) >= (0, 27)


_TORCHVISION_HAS_LANCZOS = _torchvision_has_lanczos()

_FROM_TORCHVISION_MODE = {
    InterpolationMode.NEAREST: NEAREST,
    InterpolationMode.NEAREST_EXACT: NEAREST,
    InterpolationMode.BILINEAR: BILINEAR,
    InterpolationMode.BICUBIC: BICUBIC,
    InterpolationMode.LANCZOS: LANCZOS,
    InterpolationMode.BOX: BOX,
    InterpolationMode.HAMMING: HAMMING,
}

# The installed reference class's defaults (transformers 5.x, EfficientNetImageProcessor).
_DEFAULTS: dict[str, Any] = {
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
_SIZE_KEY_SETS = (
    frozenset({"height", "width"}),
    frozenset({"shortest_edge"}),
    frozenset({"shortest_edge", "longest_edge"}),
    frozenset({"max_height", "max_width"}),
)


# --------------------------------------------------------------------------------------
# Validation of single fields. Each returns the canonical value or raises ConfigError.
# --------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be true or false, got {value!r}.")


def _parse_optional_bool(name: str, value: Any) -> bool | None:
    return None if value is None else _parse_bool(name, value)


def _parse_size(name: str, value: Any, default_to_square: bool = True) -> dict[str, int]:
    if _is_int(value):
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
    allowed = _SIZE_KEY_SETS[:1] if name == "crop_size" else _SIZE_KEY_SETS
    if frozenset(size) not in allowed:
        choices = " or ".join("{" + ", ".join(sorted(keys)) + "}" for keys in allowed)
        raise ConfigError(f"{name} must have the keys {choices}, got {sorted(size)}.")
    if not all(_is_int(val) and val > 0 for val in size.values()):
        raise ConfigError(f"{name} must hold positive integers, got {value!r}.")
    return {key: int(val) for key, val in size.items()}


def _parse_resample(name: str, value: Any) -> int:
    # PIL.Image.Resampling members are ints, so they pass; a torchvision mode is mapped back.
    if isinstance(value, InterpolationMode):
        value = _FROM_TORCHVISION_MODE.get(value, value)
    if _is_int(value) and int(value) in _RESAMPLE_NAMES:
        return int(value)
    choices = ", ".join(f"{code} ({label})" for code, label in _RESAMPLE_NAMES.items())
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
    if isinstance(values, (np.ndarray, torch.Tensor)):
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


_PARSERS = {
    "do_resize": _parse_bool,
    "size": _parse_size,
    "resample": _parse_resample,
    "do_center_crop": _parse_bool,
    "crop_size": _parse_size,
    "do_rescale": _parse_bool,
    "rescale_factor": _parse_rescale_factor,
    "rescale_offset": _parse_bool,
    "do_normalize": _parse_bool,
    "image_mean": _parse_channels,
    "image_std": _parse_channels,
    "include_top": _parse_bool,
    "backend": _parse_backend,
    "do_convert_rgb": _parse_optional_bool,
}


# --------------------------------------------------------------------------------------
# Output container
# --------------------------------------------------------------------------------------


class BatchFeature(dict):
    """The result of preprocessing: a dict with ``"pixel_values"``, also readable as an attribute.

    Mirrors transformers' ``BatchFeature`` closely enough that ``model(**processor(images))``
    and ``processor(images).pixel_values`` work the same way.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Move (or cast) every tensor value, like ``torch.Tensor.to``; other values are kept."""
        return BatchFeature(
            {key: val.to(*args, **kwargs) if isinstance(val, torch.Tensor) else val for key, val in self.items()}
        )


# --------------------------------------------------------------------------------------
# Pixel operations, free of processor state so that each can be read and tested alone
# --------------------------------------------------------------------------------------


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way the reference does (transparency over white)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _pil_as_is(image: Image.Image, backend: str) -> torch.Tensor:
    """A PIL image's own values (palette indices, 16-bit levels, alpha...) as C×H×W, without RGB conversion.

    What the reference does with ``do_convert_rgb`` off. One channel is kept as one
    (normalisation then broadcasts it to three); the channel counts the reference
    cannot normalise are refused here with a sentence instead of its shape error.
    """
    array = np.array(image)
    tensor = torch.from_numpy(array)
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    channels = tensor.shape[0]
    usable = (3,) if backend == "pil" else (1, 3)
    if channels not in usable:
        raise InputError(
            f"A {image.mode} image has {channels} channel(s) and do_convert_rgb is off, so the "
            f"{backend} reference cannot normalise it; pass do_convert_rgb=True to convert it to RGB."
        )
    return tensor  # bilevel images stay bool: torchvision's resize then rounds them back to 0/1, as in the reference


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor 3×H×W (channels-last strides, no permute copy)."""
    # np.array copies: np.asarray would be read-only and torch warns about those.
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _infer_channels_first(shape: Sequence[int]) -> bool:
    """Guess whether a 3-d array is C×H×W, as the reference does (C in 1, 3 or 4; C×H×W wins ties)."""
    if shape[0] in (1, 3, 4):
        return True
    if shape[2] in (1, 3, 4):
        return False
    raise InputError(f"Cannot tell which axis holds the colour channels of an array of shape {tuple(shape)}.")


def _array_to_rgb(array: np.ndarray | torch.Tensor, data_format: str | None, backend: str) -> torch.Tensor:
    """numpy array or tensor (H×W, H×W×C or C×H×W; C = 1, 3 or 4) -> 3×H×W tensor.

    uint8 stays uint8, floats stay float; other integer types are accepted when their
    values fit in 0..255, because the reference converts them to 8 bits for PIL anyway.
    """
    if isinstance(array, np.ndarray):
        if not array.flags.writeable or any(stride < 0 for stride in array.strides):
            array = np.array(array)  # torch cannot wrap read-only or reversed arrays
        try:
            tensor = torch.from_numpy(array)
        except TypeError as error:
            raise InputError(f"Images must hold integer or float pixels, got an array of {array.dtype}.") from error
    else:
        tensor = array.detach().cpu()
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise InputError(f"Images must hold integer or float pixels, got an array of {tensor.dtype}.")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim != 3:
        raise InputError(f"An image array must have 2 or 3 dimensions, got shape {tuple(tensor.shape)}.")
    elif data_format is None:
        if not _infer_channels_first(tensor.shape):
            tensor = tensor.permute(2, 0, 1)
    elif data_format in ("channels_last", "last"):
        tensor = tensor.permute(2, 0, 1)
    elif data_format not in ("channels_first", "first"):
        raise InputError(f"input_data_format must be 'channels_first' or 'channels_last', got {data_format!r}.")

    if not tensor.is_floating_point() and tensor.dtype != torch.uint8:
        if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) > 255):
            raise InputError(
                f"Integer images must hold values in 0..255, got {int(tensor.min())}..{int(tensor.max())}; "
                "convert 16-bit images to 8 bits or to floats first."
            )
        tensor = tensor.to(torch.uint8)
    elif tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)  # half precision: resize kernels want float32/64

    channels = tensor.shape[0]
    if channels == 3:
        return tensor
    if channels == 1:
        return tensor.expand(3, -1, -1)
    if channels == 4:
        return _composite_over_white(tensor, backend)
    raise InputError(f"Images must have 1, 3 or 4 channels, got {channels} (shape {tuple(tensor.shape)}).")


def _composite_over_white(rgba: torch.Tensor, backend: str) -> torch.Tensor:
    """Blend a 4×H×W image onto white with each reference's own arithmetic and rounding."""
    if rgba.is_floating_point():
        if rgba.numel() and (float(rgba.min()) < 0 or float(rgba.max()) > 1):
            raise InputError("Float RGBA images must hold values in [0, 1] to be blended onto white.")
        alpha = rgba[3:4]  # both references blend floats in the image's own precision
        return rgba[:3] * alpha + (1 - alpha)
    if backend == "torchvision":
        # Through float32 in [0, 1] and back with torchvision's conversions (which truncate).
        unit = tvF.to_dtype(rgba, torch.float32, scale=True)
        alpha = unit[3:4]
        return tvF.to_dtype(unit[:3] * alpha + (1 - alpha), torch.uint8, scale=True)
    # The PIL reference's numpy path: float64, rounded to the nearest level.
    alpha = rgba[3:4].double() / 255
    return (alpha * rgba[:3] + (1 - alpha) * 255).round().to(torch.uint8)


def _float_to_uint8_like_reference(chw: torch.Tensor) -> tuple[np.ndarray, bool]:
    """Quantise a float image to 8 bits the way the PIL reference does before resizing.

    Returns the H×W×3 uint8 array and whether it was multiplied by 255 (then the resized
    result is divided by 255 again). Values in [0, 1] are scaled and truncated (not rounded),
    whole numbers in [0, 255] are cast; anything else cannot go through PIL.
    """
    array = chw.permute(1, 2, 0).numpy()
    if np.allclose(array, array.astype(int)):
        if array.min() >= 0 and array.max() <= 255:
            return np.ascontiguousarray(array.astype(np.uint8)), False
        raise InputError(f"Image values must lie in [0, 255], got [{array.min()}, {array.max()}].")
    if array.min() >= 0 and array.max() <= 1:
        scaled = (array.astype(np.float64) * 255).astype(np.float32)
        return np.ascontiguousarray(scaled.astype(np.uint8)), True
    raise InputError(
        f"Float images must lie in [0, 1] or hold whole numbers in [0, 255], got [{array.min()}, {array.max()}]."
    )


def _resize_with_pil(image: Image.Image | torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """Resize with PIL on 8-bit pixels, as EfficientNetImageProcessorPil does."""
    from_unit_range = False
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            image = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        else:
            array, from_unit_range = _float_to_uint8_like_reference(image)
            image = Image.fromarray(array)
    resized = _pil_to_tensor(image.resize((width, height), resample=resample))
    if from_unit_range:
        # Back to [0, 1] in float64 then float32, the reference's rescale(1/255).
        resized = (resized.double() * (1 / 255)).float()
    return resized


def _resize_with_torchvision(image: Image.Image | torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """Resize with torchvision's kernels (antialiased), as transformers' default processor does."""
    mode = _TORCHVISION_MODES.get(resample)
    if mode is None or (mode == InterpolationMode.LANCZOS and not _TORCHVISION_HAS_LANCZOS):
        return _resize_with_pil(image, height, width, resample)
    tensor = _pil_to_tensor(image) if isinstance(image, Image.Image) else image
    # Channels-last uint8 input takes torch's vectorised path without a copy; the numbers
    # are the same as for the reference's contiguous C×H×W (the parity tests check it).
    return tvF.resize(tensor, [height, width], interpolation=mode, antialias=True)


def _crop_span(length: int, crop: int, pad_ceil: bool) -> tuple[int, int, int]:
    """(first source index, source length, first output index) for one axis of a center crop."""
    if length >= crop:
        return (length - crop) // 2, crop, 0
    # Too small: the whole axis is kept and zero padded. With an odd amount of padding the
    # PIL reference puts the extra pixel before the image, the torchvision one after it.
    padding = crop - length
    return 0, length, (padding + 1) // 2 if pad_ceil else padding // 2


def _center_crop(image: torch.Tensor, crop_height: int, crop_width: int, pad_ceil: bool) -> torch.Tensor:
    """Center crop a C×H×W tensor, padding with zeros (before rescaling) where it is too small."""
    _, height, width = image.shape
    top, rows, out_top = _crop_span(height, crop_height, pad_ceil)
    left, cols, out_left = _crop_span(width, crop_width, pad_ceil)
    window = image[:, top : top + rows, left : left + cols]
    if rows == crop_height and cols == crop_width:
        return window  # a view: no copy until the multiply-add below
    canvas = image.new_zeros((image.shape[0], crop_height, crop_width))
    canvas[:, out_top : out_top + rows, out_left : out_left + cols] = window
    return canvas


@lru_cache(maxsize=32)
def _affine_coefficients(
    do_rescale: bool,
    rescale_factor: float,
    rescale_offset: bool,
    do_normalize: bool,
    image_mean: tuple[float, float, float],
    image_std: tuple[float, float, float],
    include_top: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift), shaped 3×1×1, so that rescale/normalize/include_top is x*scale + shift.

    Composed in float64 and rounded once to float32; the reference rounds after each of
    its three steps, so the two agree to a few float32 ulps (well under 1e-5).
    """
    mean = np.asarray(image_mean, dtype=np.float64)
    std = np.asarray(image_std, dtype=np.float64)
    scale = np.ones(3)
    shift = np.zeros(3)
    if do_rescale:
        scale *= rescale_factor
        if rescale_offset:
            shift -= 1.0  # x * factor - 1: with factor 1/127.5 this maps 0..255 to [-1, 1]
    if do_normalize:
        scale, shift = scale / std, (shift - mean) / std
    if include_top:
        # The reference divides by image_std a second time here, whether or not it normalised.
        scale, shift = scale / std, shift / std
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32).view(3, 1, 1)  # noqa: E731
    return as_tensor(scale), as_tensor(shift)


# --------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------


class EfficientNetImageProcessor(PretrainedMixin):
    """Turns images into the ``pixel_values`` an EfficientNet checkpoint expects.

    The fields and defaults are those of transformers' ``EfficientNetImageProcessor`` and
    travel with the weights as ``preprocessor_config.json``. Assigning a field validates it
    like the constructor does. ``backend`` chooses which transformers implementation is
    reproduced exactly (``"torchvision"``: ``EfficientNetImageProcessor``, the default;
    ``"pil"``: ``EfficientNetImageProcessorPil``); it is a runtime choice and, as in
    transformers, not written to the file.

    ``do_convert_rgb`` has the reference's meaning and default (None, i.e. off): PIL images
    of other modes are then read as they are (palette indices, 0/1 bilevel pixels, 16-bit
    levels); with True they are converted to RGB first (transparency over white). The
    command line's loader always converts (see :meth:`preprocess_pil`).

    Keys this class does not know (``processor_class``, …) are kept so that :meth:`to_dict`
    gives them back; they do not change the numbers.
    """

    do_resize: bool  # resize to `size` first; off, images keep their size (then crop or not)
    size: dict[str, int]  # {"height","width"} stretches; shortest_edge(+longest_edge), max_height/max_width keep aspect
    resample: int  # PIL filter code: 0 nearest (the hub configs), 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming
    do_center_crop: bool  # cut crop_size out of the middle after resizing; zero padding where the image is smaller
    crop_size: dict[str, int]  # {"height","width"} of the crop
    do_rescale: bool  # multiply by rescale_factor: 0..255 -> 0..1 with 1/255
    rescale_factor: float  # 1/255, or 1/127.5 with rescale_offset for [-1, 1]
    rescale_offset: bool  # subtract 1 after rescaling (x * factor - 1)
    do_normalize: bool  # (x - image_mean) / image_std per channel
    image_mean: tuple[float, float, float]  # RGB means in the rescaled range
    image_std: tuple[float, float, float]  # RGB stds; the hub files store sqrt(ImageNet std), see include_top
    include_top: bool  # divide by image_std once more (Keras EfficientNet's extra rescaling layer)
    do_convert_rgb: bool | None  # convert PIL images to RGB first; None/False reads their values as they are
    backend: str  # "torchvision" or "pil": which transformers implementation to match exactly

    def __init__(
        self,
        *,
        do_resize: bool | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | None = None,
        do_center_crop: bool | None = None,
        crop_size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        rescale_offset: bool | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        include_top: bool | None = None,
        do_convert_rgb: bool | None = None,
        backend: Backend = "torchvision",
        default_to_square: bool = True,
        **extra: Any,
    ) -> None:
        """Validate and store the fields; ``None`` means the reference default, as in transformers.

        ``default_to_square=False`` makes an integer ``size`` mean the shortest edge (as in
        the reference); it only affects how ``size`` is read and is not stored.

        Raises:
            ConfigError: a value is of the wrong type or out of range; the message names the field.
        """
        given = {
            "do_resize": do_resize,
            "size": size,
            "resample": resample,
            "do_center_crop": do_center_crop,
            "crop_size": crop_size,
            "do_rescale": do_rescale,
            "rescale_factor": rescale_factor,
            "rescale_offset": rescale_offset,
            "do_normalize": do_normalize,
            "image_mean": image_mean,
            "image_std": image_std,
            "include_top": include_top,
            "do_convert_rgb": do_convert_rgb,
        }
        if _is_int(size) and not _parse_bool("default_to_square", default_to_square):
            given["size"] = {"shortest_edge": int(size)}
        for name, value in given.items():
            setattr(self, name, value)
        self.backend = backend
        # The type is ours to write (always EfficientNetImageProcessor); a stored "...Pil" would not round-trip.
        extra.pop("image_processor_type", None)
        object.__setattr__(self, "_extra", copy.deepcopy(extra))

    def __setattr__(self, name: str, value: Any) -> None:
        # Every assignment goes through the same validation as the constructor, so a
        # processor is never half-valid; None restores the default, as in the reference.
        parse = _PARSERS.get(name)
        if parse is not None:
            value = copy.deepcopy(_DEFAULTS[name]) if value is None and name in _DEFAULTS else parse(name, value)
        object.__setattr__(self, name, value)

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content: every field, the kept extra keys and the type."""
        config = copy.deepcopy(self._extra)
        config.update(
            {
                "crop_size": dict(self.crop_size),
                "do_center_crop": self.do_center_crop,
                "do_normalize": self.do_normalize,
                "do_rescale": self.do_rescale,
                "do_resize": self.do_resize,
                "image_mean": list(self.image_mean),
                "image_processor_type": IMAGE_PROCESSOR_TYPE,
                "image_std": list(self.image_std),
                "include_top": self.include_top,
                "resample": self.resample,
                "rescale_factor": self.rescale_factor,
                "rescale_offset": self.rescale_offset,
                "size": dict(self.size),
            }
        )
        if self.do_convert_rgb is not None:  # the reference writes it only when set
            config["do_convert_rgb"] = self.do_convert_rgb
        return config

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> EfficientNetImageProcessor:
        """Build from a ``preprocessor_config.json`` dict; ``overrides`` (e.g. ``backend="pil"``) win.

        Raises:
            ConfigError: the dict is not a mapping or holds a bad value.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"An image processor config must be a JSON object, got {type(config).__name__}.")
        return cls(**{**config, **overrides})

    def to_json_string(self) -> str:
        """The JSON text transformers writes: sorted keys, two-space indent, final newline."""
        try:
            return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        except TypeError as error:
            raise ConfigError(f"The image processor config holds a value JSON cannot store: {error}.") from error

    def to_json_file(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json_string` to ``path`` atomically (a reader never sees half a file)."""
        path = Path(path)
        text = self.to_json_string()
        from effnet_cli.output import write_text

        write_text(path, text)
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str], **overrides: Any) -> EfficientNetImageProcessor:
        """Read a ``preprocessor_config.json``.

        Raises:
            ConfigError: the file is not valid JSON or holds a bad value.
            OSError: the file cannot be read.
        """
        text = Path(path).read_text(encoding="utf-8")
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from error
        return cls.from_dict(config, **overrides)

    # from_pretrained / save_pretrained come from PretrainedMixin; these are its two hooks.
    pretrained_file = PREPROCESSOR_CONFIG_NAME

    @classmethod
    def _from_located(cls, located: Located, **overrides: Any) -> EfficientNetImageProcessor:
        """:meth:`from_pretrained`: read ``preprocessor_config.json`` (or the file given); ``overrides`` win."""
        return cls.from_json_file(located.file, **overrides)

    def _save_files(self, directory: Path) -> list[str]:
        """:meth:`save_pretrained`: write ``preprocessor_config.json``; returns the files written, as transformers does."""
        return [str(self.to_json_file(directory / PREPROCESSOR_CONFIG_NAME))]

    def replace(self, **changes: Any) -> EfficientNetImageProcessor:
        """A copy with some fields changed (validated), keeping the backend unless it is changed too."""
        return type(self).from_dict(self.to_dict(), **{"backend": self.backend, **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EfficientNetImageProcessor):
            return NotImplemented
        return self.backend == other.backend and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, so not hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}) {self.to_json_string()}"

    # ---------------------------------------------------------------- sizes

    def resize_target(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to, with the reference's integer rounding."""
        size = self.size
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

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of every output image, or None when it depends on the input's size.

        The crop size when cropping, else the resize size; None for aspect-preserving
        sizes (shortest_edge, max_height/max_width) without a crop, or with resizing off.
        """
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if self.do_resize and "height" in self.size:
            return self.size["height"], self.size["width"]
        return None

    def draft_size(self, orig_w: int, orig_h: int) -> tuple[int, int] | None:
        """The (width, height) to pass to ``PIL.Image.draft`` for a JPEG of ``orig_w × orig_h``, or None.

        JPEG decoders can decode at 1/2, 1/4 or 1/8 scale for much less work. PIL's
        ``draft(mode, (w, h))`` picks the largest such scale that keeps the decoded image at
        least ``w × h``, so we ask for exactly the resize target: the decoder never goes below
        the size the resize needs. None when no reduction is possible (the image is less than
        twice the target on one side) or when resizing is off (the output would change size).

        Decoding at reduced size changes the pixels slightly (the DCT does part of the
        downscaling), so this is an opt-in speed-up for the loader; ``__call__`` never does it.
        """
        if not self.do_resize or orig_w <= 0 or orig_h <= 0:
            return None
        height, width = self.resize_target(orig_h, orig_w)
        if width <= 0 or height <= 0 or min(orig_w // width, orig_h // height) < 2:
            return None
        return width, height

    # ---------------------------------------------------------------- preprocessing

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocess an image or a list of images; see :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self,
        images: ImageLike | Sequence[ImageLike],
        return_tensors: str | None = "pt",
        *,
        input_data_format: str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Images -> ``BatchFeature(pixel_values=N×3×H×W float32)``.

        Args:
            images: a PIL image, a numpy array or torch tensor (H×W, H×W×C or C×H×W with
                C = 1, 3 or 4; uint8, other integers in 0..255, or floats), a 4-d batch
                array, or a (nested) list of those. Grey, palette and alpha images become RGB
                as in the reference (transparency over white). Floats follow the reference:
                they are rescaled too when ``do_rescale`` is on, so pass ``do_rescale=False``
                for images already in [0, 1].
            return_tensors: ``"pt"`` (torch, the default here) or ``"np"``/``None`` (numpy).
                When sizes differ (aspect-preserving sizes without a crop), ``"pt"``/``"np"``
                raise and ``None`` gives a list of 3×H×W arrays.
            input_data_format: ``"channels_first"`` or ``"channels_last"`` for arrays whose
                layout cannot be guessed (e.g. 3×H×3).
            overrides: fields to change for this call only, e.g. ``do_center_crop=True`` or
                ``do_convert_rgb=True``.

        Raises:
            InputError: an image cannot be used (type, shape, value range) or return_tensors is unknown.
            ConfigError: an override has a bad value.
        """
        if return_tensors not in ("pt", "np", None):
            raise InputError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        unknown = sorted(set(overrides) - set(_PARSERS))
        if unknown:
            raise InputError(f"Unknown preprocessing option(s) {unknown}; the options are {sorted(_PARSERS)}.")
        processor = self.replace(**overrides) if overrides else self
        outputs = [processor._process_one(image, input_data_format) for image in _flatten_images(images)]
        shapes = {tuple(output.shape) for output in outputs}
        if len(shapes) > 1:
            if return_tensors is not None:
                raise InputError(
                    f"The images come out in different sizes {sorted(shapes)}, so they cannot be stacked; "
                    "use a height/width size or a center crop, or return_tensors=None."
                )
            return BatchFeature(pixel_values=[output.numpy() for output in outputs])
        pixel_values = torch.stack(outputs)
        return BatchFeature(pixel_values=pixel_values if return_tensors == "pt" else pixel_values.numpy())

    def preprocess_pil(self, image: Image.Image) -> torch.Tensor:
        """One decoded PIL image -> 3×H×W float32 tensor: the data-loading workers' path.

        The same numbers as ``self(image).pixel_values[0]`` (it is the same code, without
        the batching): resize on 8-bit pixels, then crop and one multiply-add per pixel with
        precomputed per-channel constants. Unlike ``__call__`` it always converts to RGB
        (the reference's ``do_convert_rgb=True``), whatever ``do_convert_rgb`` says: the
        command line classifies photos, never palette indices.
        """
        if not isinstance(image, Image.Image):
            raise InputError(f"preprocess_pil takes a PIL image, got {type(image).__name__}.")
        return self._process_one(image, None, to_rgb=True)

    def _process_one(self, image: ImageLike, data_format: str | None, to_rgb: bool = False) -> torch.Tensor:
        """The whole pipeline for one image, in the reference's order."""
        if isinstance(image, Image.Image) and image.mode != "RGB" and not (to_rgb or self.do_convert_rgb):
            pixels: Image.Image | torch.Tensor = _pil_as_is(image, self.backend)
        elif isinstance(image, Image.Image):
            pixels = _pil_to_rgb(image)
        else:
            pixels = _array_to_rgb(image, data_format, self.backend)
            if pixels.is_floating_point() and self.do_rescale and _in_unit_range(pixels):
                warnings.warn(
                    "The image is float in [0, 1] and do_rescale is on, so it is rescaled a second time "
                    "(as transformers does); pass do_rescale=False if it is already rescaled.",
                    UserWarning,
                    stacklevel=4,
                )
        if self.do_resize:
            height, width = self.resize_target(*_image_hw(pixels))
            resize = _resize_with_pil if self.backend == "pil" else _resize_with_torchvision
            pixels = resize(pixels, height, width, self.resample)
        elif isinstance(pixels, Image.Image):
            pixels = _pil_to_tensor(pixels)
        if self.do_center_crop:
            pixels = _center_crop(
                pixels, self.crop_size["height"], self.crop_size["width"], pad_ceil=self.backend == "pil"
            )
        scale, shift = _affine_coefficients(
            self.do_rescale,
            self.rescale_factor,
            self.rescale_offset,
            self.do_normalize,
            self.image_mean,
            self.image_std,
            self.include_top,
        )
        # One pass over the pixels, into a fresh contiguous C×H×W buffer (the input may be a view).
        out = pixels.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if out.shape[0] == 1:  # one channel read as is: normalising broadcasts it to three, as in the reference
            return out * scale + shift
        return out.mul_(scale).add_(shift)


def _image_hw(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])


def _in_unit_range(pixels: torch.Tensor) -> bool:
    return bool(pixels.numel()) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1


def _is_image(value: Any) -> bool:
    return isinstance(value, (Image.Image, np.ndarray, torch.Tensor))


def _flatten_images(images: Any) -> list[ImageLike]:
    """One image, a batch array, or (nested) lists of them -> a flat list of single images."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        # A 4-d array is a batch; anything else is one image (its shape is checked later).
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        flat = [image for item in images for image in _flatten_images(item)]
        if flat:
            return flat
        raise InputError("No images were given (an empty list).")
    raise InputError(
        f"Images must be PIL images, numpy arrays or torch tensors (or lists of them), got {type(images).__name__}; "
        "open files with PIL.Image.open first."
    )
