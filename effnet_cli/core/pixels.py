"""The pixel operations of EfficientNet preprocessing, in torch and torchvision.

Each step the image processor runs, free of processor state so that each can be read and
tested alone: conversion to a 3×H×W tensor (RGB, transparency over white), resizing with
either reference's kernels (torchvision's or PIL's), the zero-padded center crop, and the
per-channel multiply-add that rescale, normalize and ``include_top`` compose into. The
order they run in is :meth:`EfficientNetImageProcessor._process_one
<effnet_cli.core.processor.EfficientNetImageProcessor._process_one>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

from effnet_cli.core.image_fields import BICUBIC, BILINEAR, LANCZOS, NEAREST
from effnet_cli.core.numpy_pixels import affine, crop_span, torchvision_has_lanczos
from effnet_cli.core.numpy_pixels import pil_to_rgb as pil_to_rgb  # the processor reaches every pixel step here
from effnet_cli.errors import InputError

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

# The torchvision reference maps PIL filters to these modes. NEAREST becomes NEAREST_EXACT
# (source index floor((i + 0.5) * in / out)), which is not what PIL's NEAREST samples.
# torch has no box or hamming kernel: for those the reference itself fails, and we resize with PIL.
_TORCHVISION_MODES = {
    NEAREST: InterpolationMode.NEAREST_EXACT,
    BILINEAR: InterpolationMode.BILINEAR,
    BICUBIC: InterpolationMode.BICUBIC,
    LANCZOS: InterpolationMode.LANCZOS,
}


# Native lanczos arrived in torchvision 0.27; older versions make the reference fall back to bicubic,
# which we do not copy: PIL's lanczos is the closer answer.
_TORCHVISION_HAS_LANCZOS = torchvision_has_lanczos()


# --------------------------------------------------------------------------------------
# Images in, 3×H×W tensors (or PIL RGB images) out
# --------------------------------------------------------------------------------------


def flatten_images(images: Any) -> list[ImageLike]:
    """One image, a batch array, or (nested) lists of them -> a flat list of single images."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        # A 4-d array is a batch; anything else is one image (its shape is checked later).
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        flat = [image for item in images for image in flatten_images(item)]
        if flat:
            return flat
        raise InputError("No images were given (an empty list).")
    raise InputError(
        f"Images must be PIL images, numpy arrays or torch tensors (or lists of them), got {type(images).__name__}; "
        "open files with PIL.Image.open first."
    )


def image_hw(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    """(height, width) of a PIL image or a C×H×W tensor."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])


def in_unit_range(pixels: torch.Tensor) -> bool:
    """Whether a non-empty float image lies in [0, 1], i.e. looks rescaled already."""
    return bool(pixels.numel()) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1


def pil_as_is(image: Image.Image, backend: str) -> torch.Tensor:
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


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
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


def array_to_rgb(array: np.ndarray | torch.Tensor, data_format: str | None, backend: str) -> torch.Tensor:
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
        return composite_over_white(tensor, backend)
    raise InputError(f"Images must have 1, 3 or 4 channels, got {channels} (shape {tuple(tensor.shape)}).")


def composite_over_white(rgba: torch.Tensor, backend: str) -> torch.Tensor:
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


# --------------------------------------------------------------------------------------
# Resizing, with either reference's kernels
# --------------------------------------------------------------------------------------


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


def resize_with_pil(image: Image.Image | torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """Resize with PIL on 8-bit pixels, as EfficientNetImageProcessorPil does."""
    from_unit_range = False
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            image = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        else:
            array, from_unit_range = _float_to_uint8_like_reference(image)
            image = Image.fromarray(array)
    resized = pil_to_tensor(image.resize((width, height), resample=resample))
    if from_unit_range:
        # Back to [0, 1] in float64 then float32, the reference's rescale(1/255).
        resized = (resized.double() * (1 / 255)).float()
    return resized


def resize_with_torchvision(image: Image.Image | torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """Resize with torchvision's kernels (antialiased), as transformers' default processor does."""
    mode = _TORCHVISION_MODES.get(resample)
    if mode is None or (mode == InterpolationMode.LANCZOS and not _TORCHVISION_HAS_LANCZOS):
        return resize_with_pil(image, height, width, resample)
    tensor = pil_to_tensor(image) if isinstance(image, Image.Image) else image
    # Channels-last uint8 input takes torch's vectorised path without a copy; the numbers
    # are the same as for the reference's contiguous C×H×W (the parity tests check it).
    return tvF.resize(tensor, [height, width], interpolation=mode, antialias=True)


# --------------------------------------------------------------------------------------
# Center crop, then rescale/normalize as one multiply-add
# --------------------------------------------------------------------------------------


def center_crop(image: torch.Tensor, crop_height: int, crop_width: int, pad_ceil: bool) -> torch.Tensor:
    """Center crop a C×H×W tensor, padding with zeros (before rescaling) where it is too small."""
    _, height, width = image.shape
    top, rows, out_top = crop_span(height, crop_height, pad_ceil)
    left, cols, out_left = crop_span(width, crop_width, pad_ceil)
    window = image[:, top : top + rows, left : left + cols]
    if rows == crop_height and cols == crop_width:
        return window  # a view: no copy until the multiply-add below
    canvas = image.new_zeros((image.shape[0], crop_height, crop_width))
    canvas[:, out_top : out_top + rows, out_left : out_left + cols] = window
    return canvas


@lru_cache(maxsize=32)
def affine_coefficients(
    do_rescale: bool,
    rescale_factor: float,
    rescale_offset: bool,
    do_normalize: bool,
    image_mean: tuple[float, float, float],
    image_std: tuple[float, float, float],
    include_top: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`effnet_cli.core.numpy_pixels.affine` as tensors, cached per setting."""
    scale, shift = affine(do_rescale, rescale_factor, rescale_offset, do_normalize, image_mean, image_std, include_top)
    return torch.from_numpy(scale), torch.from_numpy(shift)
