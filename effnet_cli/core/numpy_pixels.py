"""EfficientNet preprocessing in numpy and Pillow only: the pixels of a torch-free runtime.

:class:`PixelPipeline` turns one decoded PIL image into the same 3×H×W float32 array as
``EfficientNetImageProcessor.preprocess_pil(image).numpy()`` (within 1e-6; in practice
bit for bit), without importing torch or torchvision, so that a process that runs the
model with ONNX Runtime or OpenVINO never pays for them. It is built from the processor
or straight from its ``preprocessor_config.json`` dict.

The steps are the processor's::

    image -> RGB (transparency over white) -> resize (uint8) -> center crop (zero padded)
          -> x * scale + shift (rescale, normalize, include_top composed in float64)

The ``"pil"`` backend resizes with Pillow, as the processor does. The ``"torchvision"``
backend resizes with torch's uint8 kernels, which are *not* Pillow's: Pillow keeps 22-bit
filter coefficients, torch (from Pillow-SIMD) 16-bit ones whose precision depends on the
largest weight, and Pillow's resize differs from it by one level in about 0.1-1% of pixels,
more after a clamp. So this module computes torch's antialiased bilinear, bicubic
(a = -0.5) and lanczos-3 weights, rounds them to int16 the same way and runs the same
integer arithmetic in numpy; NEAREST_EXACT is index arithmetic in float32, as in torch.

One torch path is not reproduced: bilinear on a CPU without AVX2 (x86 before Haswell,
or ``ATEN_CPU_CAPABILITY=default``), where torchvision resizes in float32 instead.
:meth:`PixelPipeline.from_processor` refuses it with :class:`UnsupportedPreprocessing`
so that the caller uses the torch processor instead of getting different numbers.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from effnet_cli.core.image_fields import (
    BICUBIC,
    BILINEAR,
    BOX,
    DEFAULTS,
    HAMMING,
    LANCZOS,
    NEAREST,
    PARSERS,
    draft_size,
    resize_target,
)
from effnet_cli.errors import ConfigError, InputError

__all__ = ["PixelPipeline", "UnsupportedPreprocessing", "affine", "crop_span", "pil_to_rgb", "resize_target",
           "torchvision_has_lanczos"]

# torch's antialiased filters on uint8: (taps at scale 1, filter); see _aa_filter.
_TORCH_TAPS = {BILINEAR: 2, BICUBIC: 4, LANCZOS: 6}


class UnsupportedPreprocessing(ConfigError):
    """This configuration's numbers can only be had from torch: use the torch processor for it."""


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


def affine(do_rescale: bool, rescale_factor: float, rescale_offset: bool, do_normalize: bool,
           image_mean: tuple[float, float, float], image_std: tuple[float, float, float],
           include_top: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 (scale, shift), 3×1×1, so that rescale/normalize/include_top is x*scale + shift.

    Composed in float64 and rounded once to float32; the reference rounds after each of its three
    steps, so the two agree to a few float32 ulps (well under 1e-5). The torch processor uses it too.
    """
    mean = np.asarray(image_mean, dtype=np.float64)
    std = np.asarray(image_std, dtype=np.float64)
    scale, shift = np.ones(3), np.zeros(3)
    if do_rescale:
        scale *= rescale_factor
        if rescale_offset:
            shift -= 1.0  # x * factor - 1: with factor 1/127.5 this maps 0..255 to [-1, 1]
    if do_normalize:
        scale, shift = scale / std, (shift - mean) / std
    if include_top:  # the reference divides by image_std a second time, normalised or not
        scale, shift = scale / std, shift / std
    return scale.astype(np.float32).reshape(3, 1, 1), shift.astype(np.float32).reshape(3, 1, 1)


_PIXEL_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                 "rescale_offset", "do_normalize", "image_mean", "image_std", "include_top")


def _read_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the pixels depend on, defaulted and checked by the processor's own parsers."""
    fields = {}
    for name in _PIXEL_FIELDS:
        value = config.get(name)
        fields[name] = DEFAULTS[name] if value is None else PARSERS[name](name, value)
    if fields["do_center_crop"] and "height" not in fields["crop_size"]:
        raise ConfigError(f"crop_size must be a height and width to center crop, got {fields['crop_size']!r}.")
    return fields


def torchvision_has_lanczos() -> bool:
    """Whether the installed torchvision (read from its metadata, not imported) resizes lanczos natively."""
    from effnet_cli.host import package_version

    try:
        major, minor = (int(part) for part in package_version("torchvision").split(".")[:2])
    except ValueError:
        return True  # no torchvision here ("-"): follow what current releases do
    return (major, minor) >= (0, 27)


def _torch_resizes_uint8_bilinear() -> bool:
    """Whether torchvision resizes uint8 bilinear natively here (AVX2 or ARM), as torch's CPU dispatch decides."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if forced:
        return forced in ("avx2", "avx512")
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return "avx2" in line.split()
    except OSError:
        pass
    return False  # cannot tell: refuse rather than risk different numbers


# --------------------------------------------------------------------------------------
# torch's uint8 resize kernels, in numpy
# --------------------------------------------------------------------------------------


def _aa_filter(resample: int, x: np.ndarray) -> np.ndarray:
    """torch's antialias filters in float64, with its operation order (so the same rounding)."""
    x = np.abs(x)
    if resample == BILINEAR:
        return np.where(x < 1.0, 1.0 - x, 0.0)
    if resample == BICUBIC:
        a = -0.5  # Keys' cubic, as Pillow; torch uses -0.75 only without antialias
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
    # lanczos-3. std::sin through math.sin (the C library's), not numpy's SIMD sine.
    sin = np.frompyfunc(math.sin, 1, 1)

    def sinc(values: np.ndarray) -> np.ndarray:
        scaled = values * math.pi
        safe = np.where(values == 0.0, 1.0, scaled)
        return np.where(values == 0.0, 1.0, sin(safe).astype(np.float64) / safe)

    return np.where(x < 3.0, sinc(x) * sinc(x / 3.0), 0.0)


def _int16_weights(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(source index per output and tap, int weights, precision bits) of torch's uint8 antialiased resize.

    HelperInterpBase::_compute_indices_min_size_weights_aa and _compute_index_ranges_int16_weights:
    weights in float64 normalised per output pixel, then scaled by 2**precision (the most bits
    that keep the largest weight within int16) and rounded half away from zero.
    """
    scale = in_size / out_size
    taps = _TORCH_TAPS[resample]
    support = taps * 0.5 * scale if scale >= 1.0 else taps * 0.5
    width = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xsize = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin, 0, width)
    j = np.arange(width)
    weights = _aa_filter(resample, ((j[None, :] + xmin[:, None]) - center[:, None] + 0.5) * invscale)
    weights = np.where(j[None, :] < xsize[:, None], weights, 0.0)
    total = np.cumsum(weights, axis=1)[:, -1:]  # left to right, as the C loop adds them
    divided = (total != 0.0)[:, 0]  # torch leaves a row whose weights sum to zero as it is
    weights[divided] /= total[divided]
    wt_max = float(weights[divided].max(initial=0.0))
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    index = np.minimum(xmin[:, None] + j[None, :], in_size - 1)
    return index, ints, precision


def _convolve(pixels: np.ndarray, axis: int, out_size: int, resample: int) -> np.ndarray:
    """One separable pass along ``axis`` (1 rows, 2 columns) of a 3×H×W uint8 array, in torch's integers.

    Channels first so that numpy's inner loops run along a whole row, not over 3 channels.
    """
    index, weights, precision = _int16_weights(pixels.shape[axis], out_size, resample)
    shape = list(pixels.shape)
    shape[axis] = out_size
    acc = np.full(shape, 1 << (precision - 1), dtype=np.int32)
    term = np.empty(shape, dtype=np.int32)
    view = (None, slice(None), None) if axis == 1 else (None, None, slice(None))
    for tap in range(index.shape[1]):
        column = weights[:, tap]
        if column.any():
            np.multiply(np.take(pixels, index[:, tap], axis=axis), column[view], out=term)
            acc += term
    acc >>= precision
    return np.clip(acc, 0, 255).astype(np.uint8)


def _resize_torch_aa(pixels: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """torch's antialiased uint8 resize of a 3×H×W array (AVX2/NEON kernels): columns, then rows, uint8 between."""
    if pixels.shape[2] != width:
        pixels = _convolve(pixels, 2, width, resample)
    if pixels.shape[1] != height:
        pixels = _convolve(pixels, 1, height, resample)
    return pixels


def _nearest_exact_index(in_size: int, out_size: int) -> np.ndarray:
    """torch's nearest-exact source indices: floorf((i + 0.5) * (float)in/out), the product rounded to float32."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    product = ((np.arange(out_size) + 0.5) * scale).astype(np.float32)
    return np.minimum(np.floor(product).astype(np.int64), in_size - 1)


# --------------------------------------------------------------------------------------
# Pixel steps
# --------------------------------------------------------------------------------------


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB as the processor does (transparency composited over white)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def crop_span(length: int, crop: int, pad_ceil: bool) -> tuple[int, int, int]:
    """(first source index, source length, first output index) of one axis of the center crop."""
    if length >= crop:
        return (length - crop) // 2, crop, 0
    padding = crop - length  # odd padding: the pil backend puts the extra zero first, torchvision last
    return 0, length, (padding + 1) // 2 if pad_ceil else padding // 2


@dataclass(frozen=True, eq=False)  # eq would compare the arrays elementwise
class PixelPipeline:
    """One PIL image -> 3×H×W float32, equal to ``EfficientNetImageProcessor.preprocess_pil``.

    Picklable (plain fields), so it can be the transform of worker processes. Build it with
    :meth:`from_processor`.
    """

    do_resize: bool
    size: tuple[tuple[str, int], ...]  # the processor's size dict, as sorted items
    resample: int  # PIL filter code
    crop: tuple[int, int] | None  # (height, width) of the center crop, or None
    scale: np.ndarray  # 3×1×1 float32
    shift: np.ndarray  # 3×1×1 float32
    backend: str  # "torchvision" or "pil"
    torch_lanczos: bool  # torchvision backend: lanczos by torch's kernel (torchvision >= 0.27) or by Pillow

    @classmethod
    def from_processor(cls, source: Any, backend: str | None = None) -> PixelPipeline:
        """From an ``EfficientNetImageProcessor`` or its ``to_dict()`` / preprocessor_config.json dict.

        ``backend`` defaults to the processor's own, or "torchvision" (the processor's default)
        for a dict, which does not store it.

        Raises:
            ConfigError: a field has a value the processor would refuse.
            UnsupportedPreprocessing: only torch gives this configuration's numbers here.
        """
        config = source.to_dict() if hasattr(source, "to_dict") else source
        if not isinstance(config, Mapping):
            raise ConfigError(f"Expected an image processor or its config dict, got {type(source).__name__}.")
        backend = backend or getattr(source, "backend", None) or "torchvision"
        if backend not in ("torchvision", "pil"):
            raise ConfigError(f"backend must be 'torchvision' or 'pil', got {backend!r}.")
        fields = _read_config(config)
        if (backend == "torchvision" and fields["do_resize"] and fields["resample"] == BILINEAR
                and not _torch_resizes_uint8_bilinear()):
            raise UnsupportedPreprocessing(
                "On this CPU (no AVX2) torchvision resizes bilinear in float32, which is not reproduced "
                "without torch; use the torch image processor."
            )
        scale, shift = affine(*(fields[name] for name in ("do_rescale", "rescale_factor", "rescale_offset",
                                                          "do_normalize", "image_mean", "image_std", "include_top")))
        crop = (fields["crop_size"]["height"], fields["crop_size"]["width"]) if fields["do_center_crop"] else None
        return cls(fields["do_resize"], tuple(sorted(fields["size"].items())), fields["resample"], crop,
                   scale, shift, backend,
                   # read only when it matters: the metadata lookup costs a start-up ~10 ms
                   torchvision_has_lanczos() if fields["resample"] == LANCZOS else True)

    # ---------------------------------------------------------------- sizes

    def resize_target(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to."""
        return resize_target(dict(self.size), height, width)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, or None when it follows the input's shape."""
        if self.crop is not None:
            return self.crop
        size = dict(self.size)
        if self.do_resize and "height" in size:
            return size["height"], size["width"]
        return None

    def draft_size(self, orig_w: int, orig_h: int) -> tuple[int, int] | None:
        """The processor's ``draft_size``: the (width, height) for ``PIL.Image.draft``, or None."""
        return draft_size(dict(self.size), self.do_resize, orig_w, orig_h)

    # ---------------------------------------------------------------- pixels

    def _resize(self, image: Image.Image, height: int, width: int) -> np.ndarray:
        """RGB image -> 3×height×width uint8 (possibly a view)."""
        if self.backend == "pil" or self.resample in (BOX, HAMMING) or (
                self.resample == LANCZOS and not self.torch_lanczos):
            return np.asarray(image.resize((width, height), resample=self.resample)).transpose(2, 0, 1)
        pixels = np.asarray(image).transpose(2, 0, 1)
        if (height, width) == pixels.shape[1:]:
            return pixels  # torchvision returns the image untouched
        if self.resample == NEAREST:  # torchvision maps PIL's NEAREST to NEAREST_EXACT
            rows = _nearest_exact_index(pixels.shape[1], height)
            cols = _nearest_exact_index(pixels.shape[2], width)
            return pixels[:, rows[:, None], cols[None, :]]
        return _resize_torch_aa(pixels, height, width, self.resample)

    def _center_crop(self, pixels: np.ndarray) -> np.ndarray:
        """Center crop a 3×H×W array, zero padded where it is smaller than the crop."""
        assert self.crop is not None
        crop_h, crop_w = self.crop
        pad_ceil = self.backend == "pil"
        top, rows, out_top = crop_span(pixels.shape[1], crop_h, pad_ceil)
        left, cols, out_left = crop_span(pixels.shape[2], crop_w, pad_ceil)
        window = pixels[:, top:top + rows, left:left + cols]
        if (rows, cols) == (crop_h, crop_w):
            return window
        canvas = np.zeros((3, crop_h, crop_w), dtype=np.uint8)
        canvas[:, out_top:out_top + rows, out_left:out_left + cols] = window
        return canvas

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One decoded PIL image (any mode) -> 3×H×W float32 array, a fresh contiguous buffer."""
        if not isinstance(image, Image.Image):
            raise InputError(f"PixelPipeline takes a PIL image, got {type(image).__name__}.")
        image = pil_to_rgb(image)
        if self.do_resize:
            pixels = self._resize(image, *self.resize_target(image.height, image.width))
        else:
            pixels = np.asarray(image).transpose(2, 0, 1)
        if self.crop is not None:
            pixels = self._center_crop(pixels)
        out = np.ascontiguousarray(pixels, dtype=np.float32)
        out *= self.scale
        out += self.shift
        return out
