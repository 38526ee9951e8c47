"""The fast-decode alternatives the benchmark measures against effnet's default (not used by effnet itself).

``classify`` decodes JPEGs with Pillow's ``draft`` (1/2, 1/4, 1/8 scale) down to 1.5x the resize
target, then runs the processor's own resize and crop. The "Fast decoding" table of
docs/benchmarks.md compares it with:

* :func:`open_simplejpeg`: libjpeg-turbo's scaled decoding through simplejpeg (scales M/8, so it
  stops closer to the requested size), for colour JPEGs it reads without a warning; anything
  else falls back to effnet's own decoder;
* :func:`preprocess_cropped`: one Pillow ``resize(box=...)`` of only the region the centre crop
  keeps, straight to the crop size, instead of resizing the whole image and cropping.

Neither was adopted: the table shows why (simplejpeg changed more top-1s at every margin and was
no faster; the crop-only resize was slower than torchvision's resize of the whole image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from effnet_cli.data import open_image


def open_simplejpeg(path: str | Path, draft_size: tuple[int, int], **kwargs: Any) -> Image.Image:
    """An RGB image decoded by simplejpeg at the smallest scale keeping both sides ≥ ``draft_size``.

    Grey, CMYK, damaged or non-JPEG files (and all files when simplejpeg is missing) go through
    :func:`effnet_cli.data.open_image` with ``draft_size``, as effnet decodes them.
    """
    try:
        import simplejpeg
    except ImportError:
        return open_image(path, draft_size=draft_size, **kwargs)
    data = Path(path).read_bytes()
    try:
        width, height, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "RGB"):
            raise ValueError(colorspace)
        with Image.open(path) as probe:  # EXIF orientation: the draft size is in shown orientation
            orientation = probe.getexif().get(0x0112, 1)
        want_w, want_h = draft_size if orientation not in (5, 6, 7, 8) else draft_size[::-1]
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=want_w, min_height=want_h, strict=True)
    except Exception:  # noqa: BLE001 - effnet's decoder decides what is wrong with it
        return open_image(path, draft_size=draft_size, **kwargs)
    image = Image.fromarray(pixels)
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    return image if transpose is None else image.transpose(transpose)


# What showing a photo with each EXIF orientation does to its stored pixels (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def preprocess_cropped(processor: Any, image: Image.Image) -> torch.Tensor:
    """``processor.preprocess_pil(image)``, but resizing only the part the centre crop keeps.

    Same filter and sample positions, so within about one 8-bit level of resize-then-crop (Pillow
    computes the filter weights from the region's own coordinates); falls back to the processor
    where there is nothing to fuse (no crop, an image smaller than the crop, nearest resampling).
    """
    if not (processor.do_resize and processor.do_center_crop) or processor.resample == Image.Resampling.NEAREST:
        return processor.preprocess_pil(image)
    height, width = processor.resize_target(image.height, image.width)
    crop_h, crop_w = processor.crop_size["height"], processor.crop_size["width"]
    if height < crop_h or width < crop_w:
        return processor.preprocess_pil(image)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    scale_x, scale_y = image.width / width, image.height / height
    box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
    region = image.convert("RGB").resize((crop_w, crop_h), resample=processor.resample, box=box)
    # The processor's own rescale and normalisation, applied to the already-cropped pixels.
    chw = torch.from_numpy(np.array(region)).permute(2, 0, 1)
    return processor.replace(do_resize=False, do_center_crop=False)(chw, return_tensors="pt")["pixel_values"][0]
