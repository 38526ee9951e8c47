"""What an index compares: ``layout`` (the default) or ``head`` features, one unit row per image.

``head`` is the model's pooled ``hidden_dim`` features, L2-normalised: what ``effnet embed --normalize``
writes, on any backend. It says what a picture shows, not where: two regions of one lawn, or the two
photos of a stereo pair, look alike to it.

``layout`` (chosen on the near-duplicate benchmark, docs/benchmarks.md) joins two unit vectors, each
scaled by 1/√2 so that the row is a unit vector whose cosine with another is the mean of the two parts'
cosines: stage 6's feature map averaged over a 4×4 grid (what is where, robust to re-encoding,
resizing and brightness) and the model input's 16×16 grey thumbnail with its mean removed (the
picture's layout, as a perceptual hash sees it). It needs the PyTorch model (stage outputs are not
part of an export).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.records.results import EmbedBatch
from effnet_cli.runtime.paths import embed_paths

__all__ = ["DEFAULT_FEATURES", "FEATURES", "embed_images", "feature_dim", "layout_rows"]

FEATURES = ("layout", "head")
DEFAULT_FEATURES = "layout"
LAYOUT_STAGE = 6  # 1-based; the benchmark's best of stages 6 and 7 (the head)
GRID = 4
THUMB = 16


def check_features(features: str) -> None:
    """One-line usage error for an unknown feature kind."""
    if features not in FEATURES:
        raise InputError(f"--features must be one of {', '.join(FEATURES)}, got {features!r}.")


def feature_dim(engine: Any, features: str) -> int:
    """The width of ``features``' rows for ``engine``'s model."""
    check_features(features)
    if features == "head":
        return int(engine.feature_dim(None))
    stage = engine.config.stages()[LAYOUT_STAGE - 1]
    return stage.out_channels * GRID * GRID + THUMB * THUMB


def layout_rows(engine: Any, pixel_values: Any) -> np.ndarray:
    """The ``layout`` rows of a preprocessed batch (PyTorch engine only)."""
    import torch
    import torch.nn.functional as F

    model = getattr(engine, "model", None)
    if model is None or getattr(engine, "runner", None) is not None:
        raise InputError("--features layout runs the PyTorch model; use --backend torch (or --features head).")
    base = getattr(model, "efficientnet", model)
    param = next(base.parameters())
    with torch.inference_mode():
        x = pixel_values.to(param.device, param.dtype)
        fmap = base.stage_output(x, LAYOUT_STAGE - 1)
        grid = F.normalize(F.adaptive_avg_pool2d(fmap.float(), GRID).flatten(1), dim=1)
        thumb = F.adaptive_avg_pool2d(x.float().mean(1, keepdim=True), THUMB).flatten(1)
        thumb = F.normalize(thumb - thumb.mean(1, keepdim=True), dim=1)
        rows = torch.cat([grid, thumb], 1) / math.sqrt(2.0)
    return rows.cpu().numpy()


def embed_images(engine: Any, paths: Sequence[str], features: str, *, batch_size: int = 16,
                 workers: int = 0) -> Iterator[EmbedBatch]:
    """The rows of ``features`` for ``paths``, per batch, through the one embedding loop (errors per input)."""
    check_features(features)
    if features == "head":
        return embed_paths(engine, paths, normalize=True, batch_size=batch_size, workers=workers)
    return embed_paths(engine, paths, batch_size=batch_size, workers=workers, dim=feature_dim(engine, features),
                       rows=lambda pixels: layout_rows(engine, pixels))
