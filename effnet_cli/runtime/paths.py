"""Paths -> per-batch records, for any engine: the PyTorch :class:`effnet_cli.runtime.engine.Engine`
or the torch-free :class:`effnet_cli.runtime.lean.LeanEngine`.

Nothing here imports torch: an engine's ``topk`` and ``features`` do the model's work, and
this module turns their rows into :class:`Result` records in input order, one error record
per input that could not be decoded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.records.results import EmbedBatch, Result

__all__ = ["POOLS", "classify_paths", "embed_paths", "read_labels", "require_classifier"]

POOLS = ("mean", "max")


def read_labels(path: str | Path) -> list[str]:
    """Label names from a text file (one per line) or JSON (a list, or an {index: name} object)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read labels file {path}: {exc.strerror if isinstance(exc, OSError) else exc}.") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            reason = exc.msg.removesuffix(" at")  # json says "Invalid control character at" and gives the place apart
            raise InputError(f"Labels file {path} is not valid JSON: {reason} at line {exc.lineno}, "
                             f"column {exc.colno}.") from None
        if isinstance(data, dict):
            try:
                return [str(data[k]) for k in sorted(data, key=int)]
            except ValueError:
                raise InputError(f"Labels file {path}: object keys must be class indices.") from None
        if isinstance(data, list):
            return [str(x) for x in data]
        raise InputError(f"Labels file {path} must hold a JSON list or object.")
    return [line.strip() for line in text.splitlines() if line.strip()]



def require_classifier(engine: Any) -> None:
    """Refuse to classify with a model that has no classification head (``num_labels`` 0).

    ``effnet convert`` keeps headless checkpoints headless on purpose; a softmax
    over their pooled features would look like predictions and mean nothing.
    """
    # The config decides, so a runtime backend need not build the PyTorch model to know.
    model = getattr(engine, "model", None)  # the PyTorch model, which the lean engine has not
    headless = not engine.config.num_labels or (model is not None and engine.runner is None
                                                and not hasattr(model, "classifier"))
    if headless:
        raise InputError("This model has no classification head (num_labels is 0), so it cannot classify; "
                         "use `effnet embed` for its features.")


def classify_paths(engine: Any, paths: Sequence[str], *, top_k: int = 5, threshold: float = 0.0,
                   labels: Sequence[str] | None = None, batch_size: int = 16, workers: int = 0,
                   ) -> Iterator[list[Result]]:
    """Classify every path; yields one list of :class:`Result` per batch, in input order."""
    require_classifier(engine)
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}.")
    if labels is not None and len(labels) < engine.config.num_labels:
        raise InputError(f"The labels file has {len(labels)} names but the model has {engine.config.num_labels} classes.")
    for batch in engine.batches(paths, batch_size=batch_size, workers=workers):
        preds = engine.topk(batch.pixel_values, top_k, threshold=threshold, labels=labels) if batch.indices else []
        yield [Result(position=pos, path=paths[pos], predictions=None if row is None else preds[row], error=err)
               for pos, row, err in batch.outcomes()]


def embed_paths(engine: Any, paths: Sequence[str], *, pool: str = "mean", stage: int | None = None,
                normalize: bool = False, batch_size: int = 16, workers: int = 0, start: int = 0,
                first_row: int = 0, rows: Callable[[Any], Any] | None = None,
                dim: int | None = None) -> Iterator[EmbedBatch]:
    """Embed ``paths[start:]``; yields per batch the records (with their output row) and the feature rows.

    ``rows``: a function of a preprocessed batch computing other rows than ``engine.features`` (of width
    ``dim``), such as the similar-image index's layout features.
    """
    width = engine.feature_dim(stage) if dim is None else dim  # validates the stage before any decoding starts
    out_dtype = engine.output_numpy_dtype
    row = first_row
    for batch in engine.batches(paths, batch_size=batch_size, workers=workers, start=start):
        if batch.indices:
            feats = (engine.features(batch.pixel_values, pool=pool, stage=stage, normalize=normalize)
                     if rows is None else rows(batch.pixel_values))
            array = (feats.numpy() if hasattr(feats, "numpy") else np.asarray(feats)).astype(out_dtype, copy=False)
        else:
            array = np.zeros((0, width), dtype=out_dtype)
        results = []
        for pos, r, err in batch.outcomes():
            results.append(Result(position=pos, path=paths[pos], row=None if r is None else row + r, error=err))
        row += len(batch.indices)
        yield EmbedBatch(results=results, features=array)

