"""Inputs, safe decoding and batched loading: the first three steps of the pipeline.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers

Each step has its own module; this one re-exports their public names so code
written against ``effnet_cli.data`` keeps working:

* :mod:`effnet_cli.data.inputs`: :func:`discover_inputs` (files, directories, globs, stdin);
* :mod:`effnet_cli.data.decode`: :func:`open_image` (safe decoding, failure reasons);
* :mod:`effnet_cli.data.loader`: :func:`iter_batches`, :class:`Batch`, :func:`default_workers`.
"""

from __future__ import annotations

from effnet_cli.data.decode import DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS, open_image
from effnet_cli.data.inputs import IMAGE_EXTENSIONS, discover_inputs
from effnet_cli.data.loader import CRASH_REASON, Batch, default_workers, iter_batches

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_BACKGROUND",
    "CRASH_REASON",
    "Batch",
    "discover_inputs",
    "open_image",
    "iter_batches",
    "default_workers",
]
