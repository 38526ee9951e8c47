"""Heatmaps from pytorch-grad-cam on EfficientNet's last convolution stage, in the input image's pixels.

The CAM library computes a map at the model's input size (after the processor's resize and crop);
:func:`to_image_size` undoes that geometry, so the heatmap lines up with the photo the user gave:
pixels the center crop cut away get 0 (the model never saw them).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from effnet_cli.core.numpy_pixels import crop_span
from effnet_cli.explain.methods import METHODS, require_library


class _Logits(torch.nn.Module):
    """The classifier as a plain ``pixels -> logits`` function, the form CAM libraries call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits


def target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last convolution stage's output: the head's 1×1 conv, batch norm and activation (N×hidden_dim×h×w).

    It is the last layer that still has a spatial map, the layer Grad-CAM's authors and
    pytorch-grad-cam's examples use for EfficientNet (torchvision's ``features[-1]``).
    """
    base = getattr(model, "efficientnet", model)
    return base.encoder.top_activation


class Explainer:
    """A classifier and one CAM method, ready to explain batches of preprocessed images."""

    def __init__(self, model: torch.nn.Module, method: str, device: torch.device) -> None:
        require_library()
        cams = importlib.import_module("pytorch_grad_cam")
        targets = importlib.import_module("pytorch_grad_cam.utils.model_targets")
        self._target = targets.ClassifierOutputTarget
        model = model.to(device=device, dtype=torch.float32).eval()
        self.device = device
        self.cam = getattr(cams, METHODS[method])(model=_Logits(model), target_layers=[target_layer(model)])

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes, N×num_labels (float32, CPU)."""
        logits = self.cam.model(pixel_values.to(self.device))
        return torch.softmax(logits.float(), dim=-1).cpu()

    def heatmaps(self, pixel_values: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        """One map per image for its class ``classes[i]``: N×H×W float32 in [0, 1] at the input's size."""
        targets = [self._target(int(c)) for c in classes]
        maps = self.cam(input_tensor=pixel_values.to(self.device), targets=targets)
        return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)


def to_image_size(heatmap: np.ndarray, processor: Any, height: int, width: int) -> np.ndarray:
    """A heatmap at the model's input size, mapped back onto an image of ``height × width`` (float32, [0, 1]).

    The processor resized the image to ``resize_target`` and center-cropped it; the map is put
    back where the crop came from (zeros elsewhere, where the model saw nothing) and the result
    resized, bilinearly, to the image's own size.
    """
    rows, cols = heatmap.shape
    resized_h, resized_w = processor.resize_target(height, width) if processor.do_resize else (height, width)
    if processor.do_center_crop:
        pad_ceil = processor.backend == "pil"
        top, n_rows, out_top = crop_span(resized_h, rows, pad_ceil)
        left, n_cols, out_left = crop_span(resized_w, cols, pad_ceil)
        canvas = np.zeros((resized_h, resized_w), dtype=np.float32)
        canvas[top:top + n_rows, left:left + n_cols] = heatmap[out_top:out_top + n_rows, out_left:out_left + n_cols]
    else:
        canvas = heatmap.astype(np.float32)
    if canvas.shape != (height, width):
        canvas = np.asarray(Image.fromarray(canvas).resize((width, height), Image.BILINEAR))  # float32 2-D: mode "F"
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)
