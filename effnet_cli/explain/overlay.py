"""The two files of one explained class: the overlay PNG and the raw heatmap ``.npy``, as bytes to publish."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OVERLAY_WEIGHT = 0.5  # share of the photo in the blend: the heatmap stays readable and so does the photo


def colormap(heatmap: np.ndarray) -> np.ndarray:
    """H×W in [0, 1] -> H×W×3 uint8 in the "jet" colours (blue cold, red hot), as pytorch-grad-cam draws them."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    # show_cam_on_image blends with a photo; blending with black at weight 0 gives the colours alone.
    black = np.zeros((*heatmap.shape, 3), dtype=np.float32)
    return show_cam_on_image(black, heatmap, use_rgb=True, image_weight=0.0)


def overlay_png(image: Image.Image, heatmap: np.ndarray, caption: str) -> bytes:
    """The heatmap blended on ``image`` (its own size), ``caption`` written in its top-left corner, as PNG."""
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = OVERLAY_WEIGHT * photo + (1 - OVERLAY_WEIGHT) * colormap(heatmap).astype(np.float32)
    out = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    _caption(out, caption)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


def _caption(image: Image.Image, text: str) -> None:
    """White text on a dark band, sized to the image (readable on a thumbnail and on a 12-megapixel photo)."""
    size = max(10, min(image.width, image.height) // 20)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)


def heatmap_npy(heatmap: np.ndarray) -> bytes:
    """The heatmap as a ``.npy`` file (H×W float32, values in [0, 1])."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(heatmap, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()
